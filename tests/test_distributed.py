"""`heartnb train` in two processes (`accelerate launch`, gloo on the CPU): one complete run folder, metrics over the
whole validation set, and a second process that never writes (an audit hook makes any attempt fail, and logs it)."""
import json, os, signal, socket, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pandas as pd, pytest
from conftest import HEARTNB

ACCELERATE = Path(sys.executable).parent/'accelerate'

# Loaded by every Python process of the run (a `sitecustomize` on PYTHONPATH). In a process whose RANK is not 0 it
# installs an audit hook (PEP 578) that refuses, with PermissionError, any write under the folders in
# $HEARTNB_AUDIT (opening a file to write, making, renaming or removing a file or folder ...) and logs the attempt
# to $HEARTNB_AUDIT_LOG; `.armed` beside the log lists the processes it watched.
AUDIT = textwrap.dedent('''
    import os, sys
    def _arm():
        roots = [os.path.abspath(p) for p in os.environ.get('HEARTNB_AUDIT', '').split(os.pathsep) if p]
        log = os.environ.get('HEARTNB_AUDIT_LOG')
        if not roots or not log or int(os.environ.get('RANK', 0)) == 0: return
        W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        npaths = {'os.mkdir':1, 'os.rename':2, 'os.remove':1, 'os.rmdir':1, 'shutil.rmtree':1, 'os.truncate':1, 'os.chmod':1,
                  'os.utime':1, 'os.chown':1, 'os.link':2, 'os.symlink':2, 'shutil.copyfile':2, 'shutil.move':2,
                  'tempfile.mkstemp':1, 'tempfile.mkdtemp':1}
        busy = []
        def under(p):
            try: p = os.path.abspath(os.fsdecode(p))
            except TypeError: return False            # a file descriptor
            return any(p == r or p.startswith(r + os.sep) for r in roots)
        def hook(event, args):
            if busy: return
            if event == 'open':
                path, mode, flags = args
                if not ((isinstance(mode, str) and any(c in mode for c in 'wax+')) or (flags or 0) & W): return
                paths = [path]
            elif event in npaths: paths = list(args[:npaths[event]])
            else: return
            hit = [os.fsdecode(p) for p in paths if under(p)]
            if not hit: return
            busy.append(1)
            try:
                with open(log, 'a') as f: f.write(f"rank {os.environ['RANK']} pid {os.getpid()}: {event} {hit}\\n")
            finally: busy.pop()
            raise PermissionError(f"audit: rank {os.environ['RANK']} may not write {hit[0]} ({event})")
        sys.addaudithook(hook)
        with open(log + '.armed', 'a') as f: f.write(f"rank {os.environ['RANK']} pid {os.getpid()}\\n")
    _arm()
''')

def free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(args, env, timeout=600):
    "Run `args` in a session of its own (all its processes are killed on a timeout); (exit code, stdout, stderr)."
    p = subprocess.Popen(list(map(str, args)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try: out,err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); out,err = p.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out}\n{err}")
    return p.returncode, out, err

def files(folder:Path)->set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob('*')}

@pytest.fixture
def audit_env(tmp_path, synth):
    "Environment for a run whose processes of rank > 0 may not write under tmp_path/'run' or the dataset"
    site = tmp_path/'site'; site.mkdir()
    (site/'sitecustomize.py').write_text(AUDIT)
    log = tmp_path/'writes.log'
    return log, {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1', 'ACCELERATE_USE_CPU': '1',
                 'PYTHONPATH': os.pathsep.join([str(site), *filter(None, [os.environ.get('PYTHONPATH')])]),
                 'HEARTNB_AUDIT': os.pathsep.join([str(tmp_path/'run'), str(synth)]), 'HEARTNB_AUDIT_LOG': str(log)}

def test_the_audit_catches_a_second_process_writing(tmp_path, audit_env):
    "The check of the check: a process of rank 1 that writes in the audited folder fails, and the attempt is logged; rank 0 may."
    log,env = audit_env
    (tmp_path/'run').mkdir()
    code = f"from pathlib import Path; Path({str(tmp_path/'run'/'x.json')!r}).write_text('{{}}')"
    r = subprocess.run([sys.executable, '-c', code], env={**env, 'RANK': '1'}, capture_output=True, text=True)
    assert r.returncode != 0 and 'audit: rank 1 may not write' in r.stderr, r.stderr
    assert 'x.json' in log.read_text() and not (tmp_path/'run'/'x.json').exists()
    r = subprocess.run([sys.executable, '-c', code], env={**env, 'RANK': '0'}, capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path/'run'/'x.json').exists(), r.stderr

def two_processes(*args, env):
    "`heartnb ARGS` in two processes on the CPU (`accelerate launch`, gloo); (stdout, stderr), after checking the exit code"
    rc,stdout,stderr = launch([ACCELERATE, 'launch', '--multi_gpu', '--num_processes', 2, '--num_machines', 1, '--mixed_precision', 'no',
                               '--dynamo_backend', 'no', '--main_process_port', free_port(), HEARTNB, *args], env)
    assert rc == 0, stdout[-3000:] + stderr[-5000:]
    return stdout, stderr

def check_no_writes(log:Path):
    "The second process ran, watched by the audit, and tried no write"
    assert [l.split()[:2] for l in Path(f'{log}.armed').read_text().splitlines()] == [['rank', '1']]
    assert not log.exists(), log.read_text()

def test_train_on_two_processes(tmp_path, synth, trained, audit_env):
    "Two processes, batch 4 each, against the one-process run of `trained` (batch 8)"
    log,env = audit_env
    out = tmp_path/'run'
    stdout,_ = two_processes('train', '--data', synth, '--out', out, '--size', 64, '--bs', 4, '--freeze-epochs', 1, '--epochs', 1,
                             '--no-pretrained', '--num-it', 10, '--workers', 0, env=env)
    check_no_writes(log)
    assert stdout.count('validation recordings') == 1                    # one report: the main process's
    # the run folder of a one-process run, file for file
    assert files(out) == files(trained)
    m,t = (json.loads((d/'metrics.json').read_text()) for d in (out, trained))
    assert set(m) == set(t) and (m['processes'],t['processes']) == (2,1)
    s,st = (json.loads((d/'settings.json').read_text()) for d in (out, trained))
    assert {k for k in s if s[k] != st[k]} == {'bs'}
    # metrics over the whole validation set (fastai's DistributedDL pads 5 items to 6 for 2 processes)
    assert (m['n_train'], m['n_valid']) == (t['n_train'], t['n_valid']) == (13, 5)
    cm = np.array(m['confusion_matrix'])
    assert cm.sum() == m['n_valid'] and abs(m['accuracy'] - np.trace(cm)/cm.sum()) < 1e-9
    assert [m['per_class'][c]['support'] for c in m['classes']] == cm.sum(1).tolist()
    pred,tpred = (pd.read_csv(d/'predictions.csv') for d in (out, trained))
    assert len(pred) == pred.path.nunique() == m['n_valid'] and set(pred.path) == set(tpred.path)
    assert abs((pred.predicted == pred.label).mean() - m['accuracy']) < 1e-9
    # the per-epoch metrics, gathered by fastai from both processes during training, agree with the final report
    h = pd.read_csv(out/'history.csv')
    assert h.stage.tolist() == ['frozen', 'unfrozen']
    np.testing.assert_allclose(h[['accuracy','balanced_accuracy_score','f1_score']].iloc[-1].to_numpy(float),
                               [m['accuracy'], m['balanced_accuracy'], m['macro_f1']], atol=1e-6)

def test_cv_on_two_processes(tmp_path, synth, audit_env):
    "2-fold cross-validation in two processes: every recording validated once, by the main process's reports"
    log,env = audit_env
    out = tmp_path/'run'
    stdout,_ = two_processes('cv', '--data', synth, '--out', out, '--k', 2, '--size', 32, '--bs', 4, '--freeze-epochs', 1, '--epochs', 1,
                             '--no-pretrained', '--lr', 3e-3, '--workers', 0, env=env)
    check_no_writes(log)
    assert stdout.count('wrote ') == 1
    assert {f for f in files(out) if not f.startswith('spectrograms/')} == {
        '.heartnb.json', '.heartnb.lock', 'settings.json', 'cv.json', 'oof.csv', 'spectrograms',
        *(f'fold{i}{f}' for i in range(2) for f in ('', '/metrics.json', '/model.json', '/model.safetensors', '/predictions.csv'))}
    r = json.loads((out/'cv.json').read_text())
    oof = pd.read_csv(out/'oof.csv')
    assert r['processes'] == 2 and len(oof) == oof.path.nunique() == r['n_recordings'] == 18
    assert [f['n'] for f in r['folds']] == oof.groupby('fold').size().tolist() == [np.array(f['confusion_matrix']).sum() for f in r['folds']]
