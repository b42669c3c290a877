"""Run notebooks 00 to 05 as a Colab user meets them: a fresh Python with only IPython in it, each notebook in a new
process (a fresh runtime), every cell in order, the notebook's own install cell doing the installing.

    python tools/colab_check.py --data ../shared/datasets/heartbeat-sounds [--keep /tmp/colab]

What is simulated, because this machine has no Colab, GitHub or Kaggle:
- Colab: an empty `google.colab` module is in `sys.modules`, which is what the notebooks' install cell looks for;
- GitHub: the install cell's `git+https://github.com/heartnb/heartnb` is pointed at this clone's committed `HEAD`
  (`git+file://`), so pip builds heartnb from git exactly as it would from GitHub (uncommitted changes are not seen);
- Kaggle: a `kaggle` command that "downloads" `kinguistics/heartbeat-sounds` by copying `--data` (with its
  `--unzip` layout), for `00_data`'s data cell.
Each notebook runs alone in an empty folder (Colab's `/content`), without `HEARTNB_DATA`: `00_data` fetches the data
with its Kaggle cell; the others, in their own runtimes, use their synthetic examples. The executed notebooks are
written to `KEEP/content/`; the script prints each notebook's time and fails on the first error.
"""
import argparse, os, shutil, subprocess, sys, tempfile, time, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ['00_data', '00a_progress', '00b_safety', '01_spectrogram', '02_dataloaders', '03_train', '03a_backbones',
             '03b_nets', '04_interpret', '05_predict', '05a_evaluate']
GITHUB = 'git+https://github.com/heartnb/heartnb'

KAGGLE = '''#!/bin/sh
# kaggle datasets download kinguistics/heartbeat-sounds -p DIR --unzip   (a stand-in: copies the local data)
[ "$1 $2 $3" = "datasets download kinguistics/heartbeat-sounds" ] || { echo "fake kaggle: unexpected $*" >&2; exit 2; }
dest=.; while [ $# -gt 0 ]; do [ "$1" = "-p" ] && dest=$2; shift; done
mkdir -p "$dest" && cp -r "{data}"/. "$dest"/ && echo "Downloading heartbeat-sounds.zip (copied)"
'''

RUNNER = '''
import importlib.machinery, sys, types, time
from fastcore.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
src,dest,repo = sys.argv[1:4]
nb = read_nb(src)
for c in nb.cells: c.source = c.source.replace({github!r}, 'git+file://' + repo)
sh = CaptureShell()            # a kernel whose namespace is __main__, as Colab's ipykernel has (pickling needs it)
colab = types.ModuleType('google.colab')      # what the install cell looks for (made after the shell: execnb would
colab.__spec__ = importlib.machinery.ModuleSpec('google.colab', None)   # take itself for a notebook front end);
sys.modules['google.colab'] = colab                                     # with a spec, as libraries look for it (accelerate)
t = time.time()
sh.run_all(nb, exc_stop=True)
write_nb(nb, dest)
print(f"{{time.time()-t:.0f}}")
'''

def main(data:Path, keep:Path|None=None, start:str|None=None)->int:
    tmp = Path(keep or tempfile.mkdtemp(prefix='colab-'))
    env_dir,repo = tmp/'venv',tmp/'repo'
    reuse = bool(start and keep and (env_dir/'bin'/'python').exists())   # go on from `start` in the environment kept
    if keep and tmp.exists() and not reuse: shutil.rmtree(tmp)
    if reuse: shutil.rmtree(repo); shutil.rmtree(tmp/'content', ignore_errors=True); shutil.rmtree(tmp/'bin')
    (tmp/'bin').mkdir(parents=True)
    subprocess.run(['git', 'clone', '-q', str(ROOT), str(repo)], check=True)   # what GitHub would serve: HEAD, committed
    (tmp/'bin'/'kaggle').write_text(KAGGLE.replace('{data}', str(data.resolve())))
    (tmp/'bin'/'kaggle').chmod(0o755)
    (tmp/'run_nb.py').write_text(RUNNER.format(github=GITHUB))
    t = time.time()
    py = env_dir/'bin'/'python'
    if not reuse:
        venv.create(env_dir, with_pip=True)
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--upgrade', 'pip', 'execnb'], check=True)   # a current pip, and IPython, as Colab has
        print(f"fresh environment with IPython: {time.time()-t:.0f} s", flush=True)
    env = {k: v for k,v in os.environ.items() if not k.startswith(('HEARTNB_', 'VIRTUAL_ENV', 'PYTHONPATH'))}
    env.update(PATH=f"{env_dir/'bin'}:{tmp/'bin'}:{env['PATH']}", PYTHONWARNINGS='ignore')
    for name in NOTEBOOKS[NOTEBOOKS.index(start) if start else 0:]:
        content = tmp/'content'/name                     # Colab's /content: the notebook alone in an empty folder
        content.mkdir(parents=True)
        shutil.copy(ROOT/'nbs'/f'{name}.ipynb', content)
        t = time.time()
        r = subprocess.run([str(py), str(tmp/'run_nb.py'), f'{name}.ipynb', f'{name}.ipynb', str(repo)], cwd=content,
                           env=env, capture_output=True, text=True)
        if r.returncode:
            print(f"{name}: FAILED after {time.time()-t:.0f} s\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}", file=sys.stderr)
            return 1
        print(f"{name:16s} ran in {time.time()-t:4.0f} s", flush=True)
    print(f"the notebooks ran; executed copies in {tmp/'content'}")
    return 0

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', type=Path, required=True, help="the PASCAL data (Kaggle layout), served by the fake `kaggle`")
    p.add_argument('--keep', type=Path, help="work here and keep it (default: a new temporary folder)")
    p.add_argument('--start', choices=NOTEBOOKS, help="begin with this notebook, in the environment kept in --keep")
    a = p.parse_args()
    sys.exit(main(a.data, a.keep, a.start))
