import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, soundfile as sf
from PIL import Image
from conftest import run, run_cli, HEARTNB
from heartnb.synth import make_synth_dataset, synth_pcg
from heartnb.spectrogram import wav2image

METRIC_KEYS = {'accuracy','error_rate','macro_f1','balanced_accuracy','per_class','confusion_matrix','classes','n_train',
               'n_valid','split','seed','size','epochs','lrs','pretrained','seconds'}

def test_help_lists_the_contract_options():
    rc,txt = run_cli('train', '--help')
    assert rc == 0
    for opt in ('--data','--out','--subset','--size','--bs','--valid-pct','--split','--seed','--freeze-epochs','--epochs',
                '--lr','--arch','--no-pretrained','--weights','--include-noisy','--limit'): assert opt in txt
    assert run_cli('spectrograms', '--help')[0] == 0
    rc,txt = run_cli('predict', '--help')
    assert rc == 0 and '--json' in txt
    assert run_cli('nonsense')[0] == 2

def test_train_writes_the_run_folder(trained):
    for f in ('model.pkl','metrics.json','confusion_matrix.png','lr_find.png','lr_find_unfrozen.png','history.csv','top_losses.png'):
        assert (trained/f).exists(), f
    m = json.loads((trained/'metrics.json').read_text())
    assert METRIC_KEYS <= set(m)
    assert m['n_train'] + m['n_valid'] == 18 and m['n_valid'] == 5       # 18 clean recordings, 30% valid
    assert m['classes'] == ['extrastole','murmur','normal']
    assert np.array(m['confusion_matrix']).sum() == m['n_valid']
    assert 0 <= m['macro_f1'] <= 1 and 0 <= m['balanced_accuracy'] <= 1
    assert abs(m['accuracy'] + m['error_rate'] - 1) < 1e-9
    assert m['pretrained'] == 'none' and m['split'] == 'random' and m['size'] == 64
    assert {'index','spectrograms','lr_find','fit_frozen','lr_find_unfrozen','fit_unfrozen','interpret','export'} <= set(m['seconds'])
    h = pd.read_csv(trained/'history.csv')
    assert h.stage.tolist() == ['frozen','unfrozen'] and {'train_loss','valid_loss','accuracy'} <= set(h.columns)

def test_predict_raw_wavs(trained, synth):
    wavs = sorted((synth/'set_b').glob('murmur__*.wav'))[:3]
    r = run('predict', trained/'model.pkl', *wavs, '--json')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [r['file'] for r in res] == [str(w) for w in wavs]
    for r in res:
        assert set(r['probabilities']) == {'extrastole','murmur','normal'}
        assert abs(sum(r['probabilities'].values()) - 1) < 1e-5
        assert r['label'] == max(r['probabilities'], key=r['probabilities'].get)
    rc,txt = run_cli('predict', trained/'model.pkl', wavs[0])
    assert rc == 0 and wavs[0].name in txt

def test_same_seed_same_split_and_metrics(trained, synth, tmp_path):
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'again', '--size', 64, '--bs', 8, '--freeze-epochs', 1,
                     '--epochs', 1, '--no-pretrained', '--num-it', 10, '--workers', 0)
    assert rc == 0, txt
    a,b = (json.loads((p/'metrics.json').read_text()) for p in (trained, tmp_path/'again'))
    for k in ('confusion_matrix','accuracy','macro_f1','lrs'): assert a[k] == b[k], k

def test_patient_split_and_limit(synth, tmp_path):
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'p', '--size', 32, '--bs', 8, '--freeze-epochs', 1, '--epochs', 0,
                     '--no-pretrained', '--lr', '1e-3', '--split', 'patient', '--limit', 12, '--workers', 0)
    assert rc == 0, txt
    m = json.loads((tmp_path/'p'/'metrics.json').read_text())
    assert m['split'] == 'patient' and m['n_train'] + m['n_valid'] == 12
    man = pd.read_csv(tmp_path/'p'/'spectrograms'/'manifest.csv')
    assert man.label.value_counts().to_dict() == {'extrastole':4, 'murmur':4, 'normal':4}   # stratified sample

def test_missing_dataset_folder(tmp_path):
    rc,txt = run_cli('train', '--data', tmp_path/'nowhere', '--out', tmp_path/'run', '--no-pretrained')
    assert rc == 1 and 'nowhere' in txt and 'Traceback' not in txt
    rc,txt = run_cli('spectrograms', '--out', tmp_path/'png', env={'HEARTNB_DATA': ''})
    assert rc == 1 and 'HEARTNB_DATA' in txt

def test_csv_lists_a_missing_file(synth, tmp_path):
    data = tmp_path/'copy'; shutil.copytree(synth, data)
    victim = sorted((data/'set_b').glob('normal__*.wav'))[0]; victim.unlink()
    rc,txt = run_cli('spectrograms', '--data', data, '--out', tmp_path/'png', '--size', 32, '--workers', 0)
    assert rc == 1 and victim.name in txt and 'missing' in txt

def test_imagenet_weights_unavailable_fails_fast(synth, tmp_path):
    t = time.time()
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'run',
                     env={'TORCH_HOME': str(tmp_path/'empty_torch_home'), 'HEARTNB_OFFLINE': '1'})
    assert rc == 1 and 'Traceback' not in txt
    for s in ('resnet34-b627a593.pth', '--weights', '--no-pretrained', 'TORCH_HOME'): assert s in txt, s
    assert not (tmp_path/'run'/'spectrograms').exists()            # failed before any long work

@pytest.mark.parametrize('name,content,msg', [
    ('empty.wav', b'', 'empty'),
    ('noise.wav', b'this is a text file, not a RIFF/WAVE file at all' * 4, 'not a readable audio file'),
    ('truncated.wav', None, 'not a readable audio file'),
])
def test_bad_wavs_name_the_file(synth, tmp_path, name, content, msg):
    good = sorted((synth/'set_b').glob('normal__*.wav'))[0]
    bad = tmp_path/name
    bad.write_bytes(good.read_bytes()[:20] if content is None else content)
    rc,txt = run_cli('predict', tmp_path/'no_model.pkl', bad)
    assert rc == 1 and 'no_model.pkl' in txt
    # in a dataset: conversion goes on past the bad file, names it, and exits non-zero
    data = tmp_path/'copy'; shutil.copytree(synth, data)
    shutil.copy(bad, data/'set_b'/good.name)
    rc,txt = run_cli('spectrograms', '--data', data, '--out', tmp_path/'png', '--size', 32, '--workers', 0)
    assert rc == 1 and good.name in txt and msg in txt, txt
    assert len(pd.read_csv(tmp_path/'png'/'manifest.csv')) == 17          # the other 17 were converted
    assert len(list((tmp_path/'png').glob('*/*.png'))) == 17
    rc,txt = run_cli('spectrograms', '--data', data, '--out', tmp_path/'png', '--size', 32, '--workers', 0, '--skip-bad')
    assert rc == 0 and '1 failed' in txt

def test_bad_wav_at_predict(trained, tmp_path):
    bad = tmp_path/'bad.wav'; bad.write_bytes(b'RIFF\x00\x00')
    rc,txt = run_cli('predict', trained/'model.pkl', bad)
    assert rc == 1 and 'bad.wav' in txt and 'Traceback' not in txt

def test_silent_wav_gives_a_defined_image(tmp_path):
    sf.write(tmp_path/'silent.wav', np.zeros(8000, np.float32), 4000, subtype='PCM_16')
    img = wav2image(tmp_path/'silent.wav', size=64)
    assert img.shape == (64,64) and img.dtype == np.uint8 and (img == 0).all()   # silence is the -top_db floor: black

def test_conversion_resumes_after_a_kill(tmp_path):
    data = make_synth_dataset(tmp_path/'many', n_per_class=30, n_noisy=0, n_unlabelled=0, duration=(8., 10.))
    out = tmp_path/'png'
    p = subprocess.Popen([str(o) for o in (HEARTNB, 'spectrograms', '--data', data, '--out', out, '--size', 512, '--workers', 1)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t = time.time()
    while len(list(out.glob('*/*.png'))) < 5 and time.time()-t < 120 and p.poll() is None: time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL); p.wait()                # the whole job, worker processes too, as a Ctrl-C or kill would
    time.sleep(0.5)
    done = sorted(out.glob('*/*.png'))
    assert 5 <= len(done) < 90, f'{len(done)} PNGs when killed'
    for f in done: Image.open(f).load()                      # every PNG on disk is complete
    rc,txt = run_cli('spectrograms', '--data', data, '--out', out, '--size', 512, '--workers', 1)
    assert rc == 0, txt
    assert f"{90-len(done)} converted, {len(done)} up to date" in txt
    assert len(list(out.glob('*/*.png'))) == 90 and not list(out.glob('*/.*.tmp'))

real = pytest.mark.skipif(not os.environ.get('HEARTNB_DATA'), reason='HEARTNB_DATA not set')

@real
def test_real_data_smoke(tmp_path):
    out = tmp_path/'real'
    rc,txt = run_cli('train', '--out', out, '--subset', 'b', '--limit', 30, '--size', 64, '--bs', 8, '--freeze-epochs', 1,
                     '--epochs', 0, '--no-pretrained', '--num-it', 20)
    assert rc == 0, txt
    m = json.loads((out/'metrics.json').read_text())
    assert m['n_train'] + m['n_valid'] == 30 and m['classes'] == ['extrastole','murmur','normal']
    assert np.array(m['confusion_matrix']).sum() == m['n_valid'] and 0 <= m['accuracy'] <= 1
    man = pd.read_csv(out/'spectrograms'/'manifest.csv')
    wav = man.path[0]
    r = run('predict', out/'model.pkl', wav, '--json')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res[0]['file'] == wav and res[0]['label'] in m['classes']
