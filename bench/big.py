"""heartnb on a big dataset: index and convert tens of thousands of short recordings; time, files/s and peak memory.
Not a test: it prints a table and writes its section of bench/results.md.

    python bench/big.py                                   # 20,000 recordings (made once under /tmp/heartnb-big, then reused)
    python bench/big.py --root /work/bigdata/big --n 20000 --small 5000 --size 128 --workers 2

The recordings are synthetic (`heartnb.synth.make_synth_layout`, the folder-per-class layout): 1 to 2 s at 2 kHz,
a third per class. The first `small` of each class are also linked into a second folder, so that the same run
measures memory at `small` and at `n` recordings: flat memory means the ratio of the two peaks stays near 1. Each
measurement runs in a fresh process whose output is a pipe, as in a log, so progress is printed as plain lines.
"""
from __future__ import annotations
import os, sys, json, time, subprocess
from pathlib import Path
from fastcore.script import call_parse
sys.path.insert(0, str(Path(__file__).parent))
from run import HERE, machine, table, merge_sections

def make_folder(root:Path, n:int)->Path:
    "`root/all`: about `n` synthetic recordings in class folders, made once (a complete folder is reused)"
    from heartnb.synth import make_synth_layout
    per = -(-n//3)
    d = root/'all'
    if sum(1 for _ in d.glob('*/*.wav')) != 3*per:
        make_synth_layout(d, 'folder', n_per_class=per, duration=(1., 2.), sr=2000, seed=0)
    return d

def link_subset(src:Path, dst:Path, n:int)->Path:
    "`dst`: the first `n/3` recordings of each class of `src`, as hard links (copies where links fail)"
    import shutil
    for lbl in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (dst/lbl).mkdir(parents=True, exist_ok=True)
        for i in range(-(-n//3)):
            f = src/lbl/f'{lbl}_{i:03d}.wav'
            if not (dst/lbl/f.name).exists():
                try: os.link(f, dst/lbl/f.name)
                except OSError: shutil.copy(f, dst/lbl/f.name)
    return dst

_MEASURE = """
import sys, json, time, resource
from heartnb.data import index_dataset
from heartnb.spectrogram import spectrogram_images
root,out,size,workers,res = sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4]),sys.argv[5]
hwm = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))/1024   # peak RSS since exec, MiB
t = time.perf_counter(); df = index_dataset(root, dataset='folder'); index_s = time.perf_counter()-t
index_MiB = hwm()
t = time.perf_counter(); spectrogram_images(df, out, size=size, workers=workers); convert_s = time.perf_counter()-t
main_MiB = hwm()
t = time.perf_counter(); man = spectrogram_images(df, out, size=size, workers=workers); rerun_s = time.perf_counter()-t
assert (man.status == 'skipped').all()
json.dump(dict(recordings=len(df), index_s=index_s, index_MiB=index_MiB, convert_s=convert_s, files_per_s=len(df)/convert_s,
               main_MiB=main_MiB, worker_MiB=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, rerun_s=rerun_s), open(res, 'w'))
"""

def measure(folder:Path, out:Path, size:int, workers:int)->tuple:
    "(figures, the progress lines printed) of indexing, converting and reconverting `folder` in a fresh process"
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    res = out.parent/f'{out.name}.json'
    r = subprocess.run([sys.executable, '-c', _MEASURE, folder, out, str(size), str(workers), res], capture_output=True, text=True)
    if r.returncode: raise SystemExit(r.stdout + r.stderr)
    return json.loads(res.read_text()),r.stdout

@call_parse
def main(
    root:str='/tmp/heartnb-big',   # folder for the generated recordings and PNGs (never inside the repository)
    n:int=20_000,                  # recordings in the big folder
    small:int=5_000,               # recordings in the small folder, for the memory ratio
    size:int=128,                  # image side, pixels
    workers:int=2,                 # conversion worker processes
    out:str=str(HERE/'results.md'),# markdown report: its section is replaced, the others kept
):
    "Time and peak memory of `index_dataset` + `spectrogram_images` at `small` and at `n` recordings"
    root = Path(root)
    t = time.perf_counter(); big = make_folder(root, n); made_s = time.perf_counter()-t
    folders = [link_subset(big, root/f'first{small}', small), big]
    rows,logs = [],{}
    for f in folders:
        r,log = measure(f, root/f'png-{f.name}', size, workers)
        rows.append(r); logs[r['recordings']] = log
        print(r, flush=True)
    s,b = rows
    cmd = ' '.join(['python bench/big.py', *sys.argv[1:]])
    txt = (f"### Big datasets: {b['recordings']:,} recordings, {size} px, {workers} workers\n\n"
           f"Synthetic recordings, 1 to 2 s at 2 kHz in class folders (`make_synth_layout`; {made_s:.0f} s to check or make). "
           f"Each row a fresh process, its output a pipe as in a log.\n\nMachine: {machine()}\n\nCommand: `{cmd}`\n\n" +
           table(rows, ['recordings','index_s','index_MiB','convert_s','files_per_s','main_MiB','worker_MiB','rerun_s']) +
           f"\n\nPeak memory at {b['recordings']:,} over {s['recordings']:,} recordings: main process ×{b['main_MiB']/s['main_MiB']:.2f}, "
           f"largest worker ×{b['worker_MiB']/s['worker_MiB']:.2f}. `index_MiB`: peak RSS after `index_dataset`; `main_MiB`: after the "
           "conversion too; `worker_MiB`: the largest worker's peak (the pages it shares with the main process counted again). "
           "`rerun_s`: the same conversion again, every PNG up to date (each checked against its recorded size and SHA-256).\n\n"
           f"The whole progress output of the {b['recordings']:,}-recording run:\n\n```\n{logs[b['recordings']].strip()}\n```\n")
    print(txt)
    fn = Path(out)
    head = fn.read_text().split('\n### ')[0] if fn.exists() else f"# heartnb benchmarks\n\nMachine: {machine()}\n"
    fn.write_text('\n'.join(merge_sections(fn, [head, txt])))
    print(f"wrote {fn}")
