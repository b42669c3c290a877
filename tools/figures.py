"""Refresh the figures and tables saved in the notebooks, from a run on the real data.

    HEARTNB_DATA=../shared/datasets/heartbeat-sounds python tools/figures.py            # every notebook, in order
    HEARTNB_DATA=... HEARTNB_RUNS=/path/to/runs python tools/figures.py nbs/03_train.ipynb nbs/04_interpret.ipynb

Each notebook runs as `nbdev-test --flags figures --save` does: the default cells plus the `#| figures` cells (the
lessons' real-data figures, minutes on a CPU), outputs written back only when every cell passes. Then every saved
image is shrunk (at most `MAX_WIDTH` pixels wide, a 64-colour PNG), progress bars are dropped, `nbdev-clean` tidies
the metadata, and each notebook must stay under `BUDGET` bytes. A notebook that fails keeps its old outputs.
`HEARTNB_RUNS` (default `runs/` beside `nbs/`) is where the lessons' real-data runs are written and looked for.
"""
import base64, io, json, os, re, subprocess, sys, time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_WIDTH = 720                 # pixels: sharp on GitHub's notebook view (about 900 px wide), small on disk
BUDGET = 1_000_000              # bytes per notebook (issue 17)
COLOURS = 64                    # plots and grey spectrograms need few; a third of the bytes of 256

def shrink_png(b64:str, max_width:int=MAX_WIDTH)->tuple[str,int]:
    "A base64 PNG at most `max_width` pixels wide, quantized to `COLOURS` colours; returns (base64, width)"
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    width = im.width
    if im.width > max_width: im = im.resize((max_width, round(im.height*max_width/im.width)), Image.LANCZOS)
    if im.mode != 'P': im = im.convert('RGB').quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    im.save(buf, 'PNG', optimize=True)
    new = base64.b64encode(buf.getvalue()).decode()
    return (new, im.width) if len(new) < len(b64) else (b64, width)   # never larger than it was

def _is_progress(out:dict)->bool:
    html = ''.join(out.get('data', {}).get('text/html', ''))
    return '<progress' in html

_BAR = re.compile(r'█|^\s*Epoch \d+/\d+ :\s*$')   # fastprogress's console bars (and their blanked-out lines)

def terminal_text(text:str)->str:
    "`text` as a terminal leaves it: each line's last carriage-return segment, progress-bar lines dropped"
    lines = [l.split('\r')[-1] for l in text.split('\n')]
    return '\n'.join(l for l in lines if not _BAR.search(l))

def shrink_notebook(path:Path)->dict:
    "Shrink the images saved in the notebook at `path` in place; returns counts and the size in bytes"
    nb = json.loads(path.read_text())
    n_img = n_audio = 0
    for cell in nb['cells']:
        if cell['cell_type'] != 'code': continue
        outs = [o for o in cell.get('outputs', []) if not _is_progress(o)]
        for o in outs:
            if o.get('output_type') == 'stream': o['text'] = terminal_text(''.join(o['text'])).lstrip('\n')
        outs = [o for o in outs if o.get('output_type') != 'stream' or o['text'].strip()]
        for o in outs:
            data = o.get('data', {})
            if 'image/png' in data:
                png = data['image/png']
                data['image/png'],w = shrink_png(''.join(png) if isinstance(png, list) else png)
                md = o.setdefault('metadata', {}).setdefault('image/png', {})
                if md.get('width', 0) > w or not md.get('width'): md.update(width=w)
                md.pop('height', None)
                n_img += 1
            if '<audio' in ''.join(data.get('text/html', '')): n_audio += 1
        cell['outputs'] = outs
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    subprocess.run([str(Path(sys.executable).parent/'nbdev-clean'), '--fname', str(path)], check=True, cwd=ROOT)
    return dict(images=n_img, audio=n_audio, bytes=path.stat().st_size)

def refresh(path:Path)->bool:
    "Run one notebook with the `figures` cells and save its outputs; True when it passed"
    t = time.time()
    r = subprocess.run([str(Path(sys.executable).parent/'nbdev-test'), '--flags', 'figures', '--save', str(path)],
                       cwd=ROOT, capture_output=True, text=True)
    ok = r.returncode == 0
    if not ok: print(r.stdout[-3000:], r.stderr[-3000:], sep='\n', file=sys.stderr)
    print(f"{path.name:28s} {'ran' if ok else 'FAILED (outputs unchanged)'} in {time.time()-t:5.0f} s", flush=True)
    return ok

def main(paths:list)->int:
    if not os.environ.get('HEARTNB_DATA'):
        sys.exit("figures.py: set HEARTNB_DATA to the PASCAL data folder (the figures come from the real recordings)")
    os.environ['HEARTNB_RUNS'] = str(Path(os.environ.get('HEARTNB_RUNS') or ROOT/'runs').resolve())   # the notebooks run in nbs/
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')           # a library's deprecation notice is not part of a lesson
    nbs = [Path(p).resolve() for p in paths] or sorted((ROOT/'nbs').glob('[0-9a-z]*.ipynb'))
    failed = [p.name for p in nbs if not refresh(p)]
    over = []
    print(f"\n{'notebook':28s} {'images':>6s} {'audio':>5s} {'KB':>6s}")
    for p in sorted(set(nbs) | set((ROOT/'nbs').glob('*.ipynb'))):
        s = shrink_notebook(p) if p in nbs else dict(images='', audio='', bytes=p.stat().st_size)
        print(f"{p.name:28s} {s['images']!s:>6s} {s['audio']!s:>5s} {s['bytes']/1000:6.0f}")
        if s['bytes'] > BUDGET: over.append(p.name)
    if over: print(f"over the {BUDGET/1e6:.0f} MB budget: {', '.join(over)}", file=sys.stderr)
    if failed: print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or over else 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
