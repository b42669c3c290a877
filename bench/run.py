"""heartnb benchmarks: where the time goes, measured side by side in one run. Not tests: they print tables and ratios.

    python bench/run.py --data ../shared/datasets/heartbeat-sounds        # all sections, writes bench/results.md
    python bench/run.py --only conversion,predict                         # some sections

Sections: `conversion` (heartnb vs a seed-style matplotlib `specshow` + `savefig` baseline, and worker scaling),
`memory` (peak RSS of conversion as the number of files grows), `pipeline` (seconds per batch waiting for data vs in
forward/backward, 512 px, batch 4 and 16), `epochs` (seconds per epoch, frozen and unfrozen, 512 px; on a CUDA GPU
also batch 64, and float32 vs mixed precision), `predict` (cold and warm latency per recording, folder throughput).
On a GPU machine the pipeline and epoch sections run there (fastai's default device) and say so in their headings.
"""
from __future__ import annotations
import os, sys, time, json, platform, subprocess, tempfile, resource, statistics
from pathlib import Path
import numpy as np, pandas as pd
from fastcore.script import call_parse

HERE = Path(__file__).parent
HEARTNB = Path(sys.executable).parent/'heartnb'

def machine()->str:
    "One line describing this machine: CPU model, cores, memory, accelerator, library versions"
    import torch, fastai, librosa
    cpu = next((l.split(':',1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), platform.processor())
    mem = os.sysconf('SC_PAGE_SIZE')*os.sysconf('SC_PHYS_PAGES')/2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f"{cpu}, {os.cpu_count()} cores visible, {mem:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, fastai {fastai.__version__}, librosa {librosa.__version__}")

def table(rows:list, cols:list)->str:
    "A markdown table"
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|'*len(cols)] +
                     ['| ' + ' | '.join(fmt(r[c]) for c in cols) + ' |' for r in rows])

# --- conversion -------------------------------------------------------------------------------------------------
def seed_png(wav, png, size=512):
    "The seed notebooks' conversion: librosa.load at 22.05 kHz, melspectrogram, power_to_db, specshow, savefig"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt, librosa, librosa.display
    y,sr = librosa.load(wav)
    S_db = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr), ref=np.max)
    fig = plt.figure(figsize=(size/100, size/100), dpi=100)
    ax = fig.add_axes([0,0,1,1]); ax.axis('off')
    librosa.display.specshow(S_db, sr=sr, ax=ax)
    fig.savefig(png, dpi=100); plt.close(fig)

def bench_conversion(df, n_base:int=40):
    "files/s of the matplotlib baseline and of heartnb (same files, one process), then heartnb on all files by workers"
    from heartnb.spectrogram import spectrogram_images
    tmp = Path(tempfile.mkdtemp())
    sub = df.iloc[:n_base]
    seed_png(sub.path.iloc[0], tmp/'warm.png')                   # imports and first-call costs out of the timing
    t = time.perf_counter()
    for i,p in enumerate(sub.path): seed_png(p, tmp/f'seed{i}.png')
    base = n_base/(time.perf_counter()-t)
    spectrogram_images(sub.iloc[:2], tmp/'warm', size=512, workers=0, progress=False)
    t = time.perf_counter()
    spectrogram_images(sub, tmp/'same', size=512, workers=0, progress=False, force=True)
    same = n_base/(time.perf_counter()-t)
    rows = [dict(converter='seed: matplotlib specshow + savefig', files=n_base, workers=1, files_per_s=base, ratio=1.0),
            dict(converter='heartnb, in process', files=n_base, workers=1, files_per_s=same, ratio=same/base)]
    for w in sorted({1, 2, os.cpu_count()}):
        t = time.perf_counter()                                  # includes starting the worker processes
        spectrogram_images(df, tmp/f'w{w}', size=512, workers=w, progress=False, force=True)
        fps = len(df)/(time.perf_counter()-t)
        rows.append(dict(converter='heartnb, `spectrogram_images`', files=len(df), workers=w, files_per_s=fps, ratio=fps/base))
    t = time.perf_counter()
    spectrogram_images(df, tmp/'level0', size=512, workers=os.cpu_count(), progress=False, force=True, png_level=0)
    fps = len(df)/(time.perf_counter()-t)
    rows.append(dict(converter='heartnb, `spectrogram_images`, `png_level=0` (same pixels, no zlib)', files=len(df),
                     workers=os.cpu_count(), files_per_s=fps, ratio=fps/base))
    t = time.perf_counter()
    spectrogram_images(df, tmp/f'w{os.cpu_count()}', size=512, workers=os.cpu_count(), progress=False)
    rows.append(dict(converter='heartnb, rerun (all up to date)', files=len(df), workers=os.cpu_count(),
                     files_per_s=len(df)/(time.perf_counter()-t), ratio=float('nan')))
    disk = {d: sum(f.stat().st_size for f in (tmp/d).glob('*/*.png'))/len(df)/1e3 for d in (f'w{os.cpu_count()}', 'level0')}
    return "### Spectrogram conversion, set_b at 512×512 px\n\n" + table(rows, ['converter','files','workers','files_per_s','ratio']) + \
        "\n\n`ratio`: files/s over the matplotlib baseline's (one process). Times include process start-up for the worker pools. " + \
        f"PNG size: {disk[f'w{os.cpu_count()}']:.0f} kB per file at the default level 1, {disk['level0']:.0f} kB at level 0.\n\n" + \
        bench_conversion_steps(sub)

def bench_conversion_steps(sub):
    "Where one file's conversion time goes (ms per file, one process): each step of `wav2image` + `save_png` alone"
    import io
    from PIL import Image
    from heartnb.spectrogram import load_audio, melspec_db, spec_image, png_bytes, spec_config, save_png
    cfg = spec_config('heart')
    ys = [load_audio(p, cfg.sr)[0] for p in sub.path]
    Ss = [melspec_db(y, cfg) for y in ys]
    imgs = [spec_image(S, cfg.top_db, 512) for S in Ss]
    tmp = Path(tempfile.mkdtemp())
    def pillow(img): b = io.BytesIO(); Image.fromarray(img).save(b, format='PNG', compress_level=1); return b.getvalue()
    steps = [('read WAV (`load_audio`)', lambda i: load_audio(sub.path.iloc[i], cfg.sr)),
             ('mel spectrogram + dB (`melspec_db`)', lambda i: melspec_db(ys[i], cfg)),
             ('8-bit image, resized to 512×512 (`spec_image`)', lambda i: spec_image(Ss[i], cfg.top_db, 512)),
             ('PNG encode: Pillow level 1, a filter chosen per row (before)', lambda i: pillow(imgs[i])),
             ('PNG encode: `png_bytes` level 1, Up filter (default)', lambda i: png_bytes(imgs[i])),
             ('PNG encode: `png_bytes` level 0', lambda i: png_bytes(imgs[i], 0)),
             ('write file, temporary name + rename (`save_png` − encode)', None)]
    rows = []
    for name,f in steps:
        if f is None:
            enc = rows[-2]['ms_per_file']
            ms = min(_per_file(lambda i: save_png(imgs[i], tmp/f'{i}.png'), len(sub)) for _ in range(3)) - enc
        else: ms = min(_per_file(f, len(sub)) for _ in range(3))
        rows.append(dict(step=name, ms_per_file=ms))
    return f"Where the time goes, ms per file in one process (best of 3 over {len(sub)} files):\n\n" + table(rows, ['step','ms_per_file'])

def _per_file(f, n)->float:
    "ms per call of f(i) for i in range(n)"
    t = time.perf_counter()
    for i in range(n): f(i)
    return (time.perf_counter()-t)/n*1e3

# --- memory -----------------------------------------------------------------------------------------------------
_MEM = """
import sys, resource, pandas as pd
from heartnb.spectrogram import spectrogram_images
df = pd.read_pickle(sys.argv[1]).iloc[:int(sys.argv[2])]
spectrogram_images(df, sys.argv[3], size=512, workers=int(sys.argv[4]), progress=False, force=True)
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))  # peak RSS since exec, KiB
print(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
# (ru_maxrss of the process itself would include the RSS of the benchmark process it was forked from, before exec)
def bench_memory(df, ns=(50, 100, 200, 400)):
    "Peak RSS (MiB) of a conversion process, and of its largest worker, as the number of files grows"
    tmp = Path(tempfile.mkdtemp()); df.to_pickle(tmp/'df.pkl')
    rows = []
    for n in [n for n in ns if n <= len(df)] + [len(df)]:
        for w in (0, 2):
            r = subprocess.run([sys.executable, '-c', _MEM, tmp/'df.pkl', str(n), tmp/f'o{n}-{w}', str(w)], capture_output=True, text=True, check=True)
            me,kids = map(int, r.stdout.split()[-2:])
            rows.append(dict(files=n, workers=w, main_MiB=me/1024, worker_MiB=kids/1024 if w else float('nan')))
    return "### Peak memory of conversion (RSS)\n\n" + table(rows, ['files','workers','main_MiB','worker_MiB']) + \
        "\n\nFlat means the peak does not grow with the number of files: each recording is read, converted, written and dropped."

# --- training input pipeline -------------------------------------------------------------------------------------
def _device()->str:
    "Where the model runs: the CUDA GPU's name, or 'CPU'"
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'

def _learner(png_dir, bs, num_workers=0, fp16=None):
    "A 512 px ResNet34 learner on the set_b PNGs (fastai's default device: the GPU when there is one; `fp16` None: mixed precision there)"
    from fastai.vision.all import set_seed
    from heartnb.spectrogram import load_manifest
    from heartnb.dataloaders import heart_dls
    from heartnb.train import heart_learner
    set_seed(42)
    dls = heart_dls(load_manifest(png_dir), 'random', 0.3, 42, 512, bs, num_workers=num_workers)
    return heart_learner(dls, pretrained=False, fp16=fp16)

def _sync():
    "Wait for the GPU's queued work, so that a timer stopped now counts it"
    import torch
    if torch.cuda.is_available(): torch.cuda.synchronize()

def _data_vs_step(learn, n_batches:int=8)->list:
    "Mean seconds per training batch waiting for data and in forward + backward + optimizer step, frozen then unfrozen"
    import torch
    from fastai.callback.fp16 import MixedPrecision
    amp = any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
    rows = []
    for stage in ('frozen', 'unfrozen'):
        learn.freeze() if stage=='frozen' else learn.unfreeze()
        learn.model.train(); opt = learn.opt
        it = iter(learn.dls.train); waits,steps = [],[]
        for i in range(n_batches + 2):
            _sync(); t = time.perf_counter(); x,y = next(it); _sync(); t1 = time.perf_counter()
            with torch.autocast(x.device.type, enabled=amp):   # float16 where fastai's MixedPrecision would use it
                loss = learn.loss_func(learn.model(x), y)
            loss.backward(); opt.step(); opt.zero_grad()
            _sync(); t2 = time.perf_counter()
            if i >= 2: waits.append(t1-t); steps.append(t2-t1)   # the first two batches warm up
        w,s = statistics.mean(waits),statistics.mean(steps)
        rows.append(dict(stage=stage, data_s=w, step_s=s, data_share=f"{w/(w+s):.1%}", images_per_s=learn.dls.bs/(w+s)))
    return rows

def bench_pipeline(png_dir, n_batches:int=8):
    "Seconds per training batch spent waiting for data vs in forward + backward + optimizer step"
    from heartnb.dataloaders import loader_workers
    rows = []
    for bs in (4, 16):
        for nw in sorted({0, 2, loader_workers()}):    # loader_workers(): heartnb's default, 0 on the CPU, min(8, cores) on a GPU
            rows += [dict(bs=bs, loader_workers=nw, **r) for r in _data_vs_step(_learner(png_dir, bs, nw), n_batches)]
    return f"### Training input pipeline vs model step, 512 px, ResNet34, {_device()}\n\n" + \
        table(rows, ['bs','loader_workers','stage','data_s','step_s','data_share','images_per_s']) + \
        "\n\n`data_s`: seconds per batch waiting for the DataLoader (PNG decode, resize, normalise); `step_s`: forward, backward and optimizer step."

def bench_pipeline_audio(df, n_batches:int=8):
    "The same split of a training batch's time for the audio path: WAV read, crop, augment and spectrogram per batch (`audio_dls`)"
    from fastai.vision.all import set_seed
    from heartnb.audio.core import audio_dls
    from heartnb.train import heart_learner
    from heartnb.audio.augment import audio_augs
    rows = []
    for bs in (4, 16):
        set_seed(42)
        dls = audio_dls(df, size=512, bs=bs, augment=audio_augs(), num_workers=0)
        rows += [dict(bs=bs, loader_workers=0, **r) for r in _data_vs_step(heart_learner(dls, pretrained=False, n_in=1), n_batches)]
    return f"### Audio path: input pipeline vs model step, 5 s clips, 512 px, 1 channel, ResNet34, {_device()}\n\n" + \
        table(rows, ['bs','loader_workers','stage','data_s','step_s','data_share','images_per_s']) + \
        "\n\n`data_s`: seconds per batch waiting for the DataLoader and its batch transforms: WAV read, tempo/pitch change, " + \
        "crop, noise, mel spectrogram in torch, resize to 512 px, time shift and masks, normalise."

def bench_epochs(png_dir, bs:int=4):
    "Seconds of one real epoch (train + validation), frozen then unfrozen, 512 px; on a CUDA GPU also at batch size 64, float32 vs mixed precision"
    import torch
    from fastai.vision.all import ProgressCallback
    gpu = torch.cuda.is_available()
    runs = [(b, fp16) for b in (bs, 64) for fp16 in (False, True)] if gpu else [(bs, False)]   # float16 only pays on a GPU
    rows = []
    for b,fp16 in runs:
        learn = _learner(png_dir, b, fp16=fp16); learn.remove_cb(ProgressCallback)
        for stage in ('frozen', 'unfrozen'):
            learn.freeze() if stage=='frozen' else learn.unfreeze()
            _sync(); t = time.perf_counter(); learn.fit_one_cycle(1, 1e-4); _sync()
            rows.append(dict(stage=stage, bs=b, mixed_precision=fp16, loader_workers=learn.dls.train.fake_l.num_workers,
                             train_batches=len(learn.dls.train), epoch_s=time.perf_counter()-t))
    for r in rows:   # speed-up of mixed precision over float32, same stage and batch size
        f32 = next(o for o in rows if (o['stage'],o['bs'],o['mixed_precision']) == (r['stage'],r['bs'],False))
        r['speedup'] = f32['epoch_s']/r['epoch_s']
    return f"### Seconds per epoch, 512 px, {_device()}\n\n" + \
        table(rows, ['stage','bs','mixed_precision','loader_workers','train_batches','epoch_s','speedup']) + \
        "\n\n`speedup`: float32 epoch seconds over this row's, same stage and batch size. The first epoch includes the first batches' warm-up."


# --- predict ----------------------------------------------------------------------------------------------------
_STAGES = """import time, json, sys
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import heartnb.cli
from heartnb.predict import open_model, predict_wavs
t2 = time.perf_counter()
m = open_model(sys.argv[1])
t3 = time.perf_counter()
predict_wavs(m, [sys.argv[2]])
t4 = time.perf_counter()
print(json.dumps(dict(torch=t1-t0, heartnb=t2-t1, load=t3-t2, inference=t4-t3)))"""

def _cold(cmds:list, n:int)->list:
    "Median wall time of `n` runs of each command of `cmds`, each run a new process, the commands taking turns (so that a busy machine slows them alike)"
    ts = [[] for _ in cmds]
    for _ in range(n):
        for c,t_ in zip(cmds, ts):
            t = time.perf_counter(); subprocess.run(c, check=True, capture_output=True); t_.append(time.perf_counter()-t)
    return [statistics.median(t_) for t_ in ts]

def bench_predict(model_dirs:dict, wavs:list, n:int=5, bs:int=16):
    """Cold `heartnb predict` of one 5 s recording against a bare `import torch` (medians of `n` new processes,
    interleaved in one run), its stages, and a folder's throughput against the bare forward pass on the same batches"""
    import soundfile as sf, torch
    from heartnb.predict import open_model, predict_wavs, wav_images, as_predictor
    tmp = Path(tempfile.mkdtemp())
    y,sr = sf.read(wavs[0]); five = tmp/'five_seconds.wav'
    sf.write(five, np.resize(y, 5*sr), sr)                       # exactly 5 s, from a real recording
    py = sys.executable
    rows,stages,folder = [],[],[]
    for name,d in model_dirs.items():
        torch_s,cold = _cold([[py, '-c', 'import torch'], [str(HEARTNB), 'predict', str(d), str(five)]], n)
        rows.append(dict(model=name, import_torch_s=torch_s, cold_predict_s=cold, ratio=cold/torch_s))
        st = [json.loads(subprocess.run([py, '-c', _STAGES, str(d), str(five)], check=True, capture_output=True, text=True).stdout) for _ in range(n)]
        stages.append(dict(model=name, **{k: statistics.median(s[k] for s in st) for k in st[0]}))
        m = open_model(d)
        predict_wavs(m, wavs[:2], bs=bs)                         # first-call costs out of the timing
        pm = as_predictor(m)
        xs = [x for w in wavs for x in wav_images(pm, w)]
        batches = [pm.inputs(xs[i:i+bs]) for i in range(0, len(xs), bs)]
        t_all,t_fwd = [],[]
        for _ in range(3):                                       # taking turns, best of 3 each
            t = time.perf_counter(); predict_wavs(m, wavs, bs=bs); t_all.append(time.perf_counter()-t)
            with torch.inference_mode():
                t = time.perf_counter()
                for x in batches: pm.model(x)
                t_fwd.append(time.perf_counter()-t)
        t_all,t_fwd = min(t_all),min(t_fwd)
        folder.append(dict(model=name, files=len(wavs), inputs=len(xs), predict_files_per_s=len(wavs)/t_all,
                           forward_files_per_s=len(wavs)/t_fwd, ratio=t_fwd/t_all))
    return ("### `heartnb predict`: cold start and folder throughput\n\n" +
        table(rows, ['model','import_torch_s','cold_predict_s','ratio']) +
        f"\n\n`cold_predict_s`: `heartnb predict RUN_DIR five_seconds.wav` (the safe model: model.safetensors + model.json), "
        f"process start to answer; `import_torch_s`: `python -c 'import torch'`; both medians of {n} new processes in this run, taking turns. "
        "`ratio`: the goal is at most 1.5.\n\nWhere a cold prediction's time goes (medians, s, in a new process; "
        "the rest of `cold_predict_s` is the interpreter's start):\n\n" +
        table(stages, ['model','torch','heartnb','load','inference']) +
        "\n\n`torch`: `import torch`; `heartnb`: importing `heartnb.cli` and `heartnb.predict` after it (no fastai, "
        "torchvision, timm, librosa or pandas); `load`: `open_model` (safetensors, network from `heartnb.nets`); "
        "`inference`: reading the WAV, spectrogram, forward pass.\n\nA folder, batched "
        f"(`predict_wavs(..., bs={bs})`, warm), against the bare forward pass of the same batches (best of 3 each, taking turns):\n\n" +
        table(folder, ['model','files','inputs','predict_files_per_s','forward_files_per_s','ratio']) +
        "\n\n`inputs`: images (PNG model) or clips (audio model: one per half clip length) the files make; `ratio`: forward-pass time over the whole "
        "prediction's (1: bounded by the model).")

def merge_sections(fn:Path, parts:list)->list:
    "The new report parts, with the sections of an existing report `fn` that were not rerun kept in their place (matched by heading)"
    if not fn.exists(): return parts
    head = lambda t: t.strip().splitlines()[0] if t.strip() else ''
    old = fn.read_text().split('\n### ')
    old = [old[0]] + ['### ' + o for o in old[1:]]
    new = {head(p): p for p in parts[1:]}
    kept = [new.pop(head(o), o) for o in old[1:]]
    return [parts[0], *kept, *new.values()]

SECTIONS = ('conversion','memory','pipeline','pipeline_audio','epochs','predict')

def _run(data, only, png, model, out):
    "The sections of `only`, run one after the other; see `main`"
    from heartnb.data import index_dataset
    from heartnb.spectrogram import spectrogram_images
    df = index_dataset(data, 'b', include_noisy=True, include_unlabelled=True)
    parts = [f"# heartnb benchmarks\n\nMachine: {machine()}\n\nDataset: set_b, {len(df)} recordings "
             f"({df.duration.sum()/60:.0f} min of audio, {df.duration.mean():.1f} s mean).\n"]
    todo = only.split(',')
    if png is None and {'pipeline','epochs'} & set(todo):
        png = Path(tempfile.mkdtemp())/'png'
        spectrogram_images(index_dataset(data, 'b'), png, size=512, progress=False)
    if 'predict' in todo:
        from heartnb.jobs import train_job
        runs = Path(tempfile.mkdtemp())
        models = {'PNG, ResNet34, 512 px (the seed recipe)': runs/'png', 'audio, EfficientNet-Lite0, 128 px': runs/'audio'}
        if model: models = {Path(model).name: Path(model)}
        else:   # weights do not change the timings: a short training run gives real model files
            train_job(runs/'png', data=data, size=512, bs=16, freeze_epochs=1, epochs=0, lr=1e-3, pretrained=False, limit=40, progress=False)
            train_job(runs/'audio', data=data, input='audio', arch='tf_efficientnet_lite0', size=128, bs=16, freeze_epochs=1, epochs=0,
                      lr=1e-3, pretrained=False, limit=40, progress=False)
    for name in todo:
        t = time.perf_counter()
        if name=='conversion': txt = bench_conversion(df)
        elif name=='memory': txt = bench_memory(df)
        elif name=='pipeline': txt = bench_pipeline(png)
        elif name=='pipeline_audio': txt = bench_pipeline_audio(index_dataset(data, 'b'))
        elif name=='epochs': txt = bench_epochs(png)
        elif name=='predict': txt = bench_predict(models, df.path.iloc[:50].tolist())
        else: raise SystemExit(f"unknown section {name!r}; choose from {SECTIONS}")
        txt += f"\n\n(section ran in {time.perf_counter()-t:.0f} s)\n"
        print(txt, flush=True); parts.append(txt)
    Path(out).write_text('\n'.join(merge_sections(Path(out), parts)))
    print(f"wrote {out}")

@call_parse
def main(
    data:str=None,            # dataset folder (default: $HEARTNB_DATA)
    only:str=','.join(SECTIONS), # comma-separated sections to run
    png:str=None,             # folder of 512 px set_b PNGs with manifest.csv (default: made by the conversion section)
    model:str=None,           # a run folder (model.safetensors + model.json) for the predict section (default: two trained briefly here)
    out:str=str(HERE/'results.md'), # markdown report to write; with --only, its other sections are kept
):
    "Run the heartnb benchmarks and write a markdown report"
    with tempfile.TemporaryDirectory(prefix='heartnb-bench-') as scratch:   # every temporary folder below lives here, removed at the end
        old,tempfile.tempdir = tempfile.tempdir,scratch
        try: _run(data, only, png, model, out)
        finally: tempfile.tempdir = old
