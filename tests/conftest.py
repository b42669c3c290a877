"End-to-end tests of the `heartnb` command line on synthetic data (and on the real data when HEARTNB_DATA is set)."
import contextlib, io, os, sys, subprocess, traceback
from pathlib import Path
import pytest
from heartnb.synth import make_synth_dataset

HEARTNB = Path(sys.executable).parent/'heartnb'

def run(*args, env=None, timeout=900, process=False):
    "Run `heartnb ARGS...` as the script does (`heartnb.cli.main`), in this process unless `process`; return a `CompletedProcess`."
    if process: return subprocess.run([str(HEARTNB), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                                      env={**os.environ, 'PYTHONWARNINGS': 'ignore', **(env or {})})
    from heartnb.cli import main        # in-process: the same code path, without importing torch and fastai again per call
    out,err,rc = io.StringIO(),io.StringIO(),0
    argv,environ = sys.argv,dict(os.environ)
    sys.argv = ['heartnb', *map(str, args)]
    os.environ.update({k: str(v) for k,v in (env or {}).items()})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: main()
            except SystemExit as e:                 # what the interpreter does with `sys.exit(code)`
                rc = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if not isinstance(e.code, (int, type(None))): print(e.code, file=sys.stderr)
            except Exception: rc = 1; traceback.print_exc()
    finally: sys.argv = argv; os.environ.clear(); os.environ.update(environ)
    return subprocess.CompletedProcess([HEARTNB, *args], rc, out.getvalue(), err.getvalue())

def run_cli(*args, **kwargs):
    "Run `heartnb ARGS...`; return (exit code, stdout+stderr)."
    r = run(*args, **kwargs)
    return r.returncode, r.stdout + r.stderr

@pytest.fixture(scope='session')
def synth(tmp_path_factory):
    "A small synthetic set_b in the Kaggle layout: 6 clean recordings per class, 2 noisy, 2 unlabelled."
    return make_synth_dataset(tmp_path_factory.mktemp('data')/'synth', n_per_class=6, n_noisy=1, n_unlabelled=2)

@pytest.fixture(scope='session')
def trained(synth, tmp_path_factory):
    "A run folder trained by `heartnb train` on the synthetic data at 64 px, from random weights."
    out = tmp_path_factory.mktemp('runs')/'run'
    rc,txt = run_cli('train', '--data', synth, '--out', out, '--size', 64, '--bs', 8, '--freeze-epochs', 1, '--epochs', 1,
                     '--no-pretrained', '--num-it', 10, '--workers', 0)
    assert rc == 0, txt
    return out
