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
    rc,txt = run_cli('train', '--help', process=True)                 # the installed script itself
    assert rc == 0
    for opt in ('--data','--out','--subset','--size','--bs','--valid-pct','--split','--seed','--freeze-epochs','--epochs',
                '--lr','--arch','--no-pretrained','--weights','--include-noisy','--limit'): assert opt in txt
    assert run_cli('spectrograms', '--help')[0] == 0
    rc,txt = run_cli('predict', '--help')
    assert rc == 0 and '--json' in txt
    assert run_cli('nonsense')[0] == 2

def test_train_writes_the_run_folder(trained):
    for f in ('model.safetensors','model.json','model.pkl','metrics.json','settings.json','confusion_matrix.png','lr_find.png',
              'lr_find_unfrozen.png','history.csv','top_losses.png'):
        assert (trained/f).exists(), f
    assert not (trained/'checkpoints').exists()                  # deleted once the run is complete
    m = json.loads((trained/'metrics.json').read_text())
    assert METRIC_KEYS <= set(m)
    assert m['n_train'] + m['n_valid'] == 18 and m['n_valid'] == 5       # 18 clean recordings, 30% valid
    assert m['classes'] == ['extrastole','murmur','normal']
    assert np.array(m['confusion_matrix']).sum() == m['n_valid']
    cm = np.array(m['confusion_matrix'])                                 # the headline metrics are those of the confusion matrix...
    recall = np.diag(cm)/np.maximum(cm.sum(1), 1)
    assert abs(m['accuracy'] - np.trace(cm)/cm.sum()) < 1e-9
    assert abs(m['balanced_accuracy'] - recall[cm.sum(1) > 0].mean()) < 1e-9
    assert [m['per_class'][c]['support'] for c in m['classes']] == cm.sum(1).tolist()
    pred = pd.read_csv(trained/'predictions.csv')                      # ...and of the validation predictions written beside them
    assert len(pred) == m['n_valid'] and abs((pred.predicted == pred.label).mean() - m['accuracy']) < 1e-9
    assert m['pretrained'] == {'weights': 'none'} and m['split'] == 'random' and m['size'] == 64
    assert m['mixed_precision'] == m['device'].startswith('cuda')         # fastai's to_fp16 on a GPU only
    assert {'index','spectrograms','lr_find','fit_frozen','lr_find_unfrozen','fit_unfrozen','interpret','export'} <= set(m['seconds'])
    h = pd.read_csv(trained/'history.csv')
    assert h.stage.tolist() == ['frozen','unfrozen']
    assert {'train_loss','valid_loss','accuracy','balanced_accuracy_score','f1_score'} <= set(h.columns)   # macro-F1 each epoch

def test_predict_raw_wavs(trained, synth):
    val = pd.read_csv(trained/'predictions.csv')[:3]                   # what the trained learner said about 3 validation recordings
    wavs = val.path.tolist()
    r = run('predict', trained/'model.pkl', *wavs, '--json', '--trust-pickle')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [r['file'] for r in res] == wavs
    for r,(_,v) in zip(res, val.iterrows()):                           # a raw WAV in gives the learner's own answer
        assert set(r['probabilities']) == {'extrastole','murmur','normal'} and r['label'] == v.predicted
        np.testing.assert_allclose([r['probabilities'][c] for c in ('extrastole','murmur','normal')],
                                   v[['extrastole','murmur','normal']].to_numpy(float), atol=1e-4)
    rc,txt = run_cli('predict', trained/'model.pkl', wavs[0], '--trust-pickle')
    assert rc == 0 and Path(wavs[0]).name in txt

def test_safe_model_predicts_as_the_pickle(trained, synth):
    wavs = sorted((synth/'set_b').glob('extrastole__*.wav'))[:3]
    a,b,c = (run('predict', m, *wavs, '--json', '--trust-pickle') for m in (trained/'model.pkl', trained/'model.safetensors', trained))
    for r in (a,b,c): assert r.returncode == 0, r.stderr
    for x,y,z in zip(*(json.loads(r.stdout) for r in (a,b,c))):
        assert x['label'] == y['label'] == z['label']
        np.testing.assert_allclose(list(x['probabilities'].values()), list(y['probabilities'].values()), atol=1e-4)

class _Evil:
    "A pickle payload that would create a file when unpickled"
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

def test_safe_loader_refuses_a_crafted_pickle(trained, synth, tmp_path):
    import pickle
    marker, evil = tmp_path/'pwned', tmp_path/'evil'
    evil.mkdir()
    shutil.copy(trained/'model.json', evil/'model.json')
    (evil/'model.safetensors').write_bytes(pickle.dumps(_Evil(marker)))
    wav = sorted((synth/'set_b').glob('normal__*.wav'))[0]
    for m in (evil/'model.safetensors', evil, evil/'model.json'):
        rc,txt = run_cli('predict', m, wav)
        assert rc == 1 and 'is a pickle' in txt and 'model.safetensors' in txt and 'Traceback' not in txt, txt
    shutil.copy(trained/'model.pkl', evil/'model.safetensors')     # the fastai export renamed: also refused
    rc,txt = run_cli('predict', evil/'model.safetensors', wav)
    assert rc == 1 and 'not a safetensors file' in txt
    assert not marker.exists()

def test_train_resumes_after_a_kill(synth, tmp_path, monkeypatch):
    "A run killed after a checkpoint, resumed, ends with the same model as an uninterrupted one (in-process: seconds, not minutes)"
    from safetensors.torch import load_file
    from heartnb.data import HeartnbError
    from heartnb.jobs import train_job
    from heartnb.train import RandomStates
    kw = dict(data=synth, size=32, bs=8, freeze_epochs=1, epochs=2, lr=3e-3, pretrained=False, workers=0, progress=False, png=tmp_path/'png')
    a = train_job(tmp_path/'whole', **kw)
    after_epoch,n = RandomStates.after_epoch,[0]
    def kill_after_two(self):
        after_epoch(self); n[0] += 1
        if n[0] == 2: raise KeyboardInterrupt          # killed once the first unfrozen epoch is checkpointed
    monkeypatch.setattr(RandomStates, 'after_epoch', kill_after_two)
    with pytest.raises(KeyboardInterrupt): train_job(tmp_path/'killed', **kw)
    monkeypatch.undo()
    assert (tmp_path/'killed'/'checkpoints'/'unfrozen_0.pth').exists() and not (tmp_path/'killed'/'metrics.json').exists()
    b = train_job(tmp_path/'killed', resume=True, **kw)
    assert b['resumed'] == {'frozen': 1, 'unfrozen': 1}             # the finished epochs were not trained again
    for k in ('confusion_matrix','accuracy','macro_f1','lrs','n_train'): assert a[k] == b[k], k
    wa,wb = (load_file(tmp_path/r/'model.safetensors') for r in ('whole','killed'))
    for k in wa: np.testing.assert_allclose(wa[k].float().numpy(), wb[k].float().numpy(), atol=1e-5, err_msg=k)
    ha,hb = (pd.read_csv(tmp_path/r/'history.csv') for r in ('whole','killed'))
    assert ha.stage.tolist() == hb.stage.tolist() == ['frozen'] + ['unfrozen']*2
    np.testing.assert_allclose(ha.valid_loss, hb.valid_loss, rtol=1e-5)   # the same run, interrupted or not
    with pytest.raises(HeartnbError, match='epochs: 2 then, 3 now'): train_job(tmp_path/'killed', resume=True, **dict(kw, epochs=3))

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
def test_bad_wavs_name_the_file(trained, synth, tmp_path, name, content, msg):
    good = sorted((synth/'set_b').glob('normal__*.wav'))[0]
    bad = tmp_path/name
    bad.write_bytes(good.read_bytes()[:20] if content is None else content)
    rc,txt = run_cli('predict', trained/'model.safetensors', bad)     # the model loads; the recording is what fails
    assert rc == 1 and name in txt and msg in txt and 'Traceback' not in txt, txt
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
    rc,txt = run_cli('predict', trained/'model.pkl', bad, '--trust-pickle')
    assert rc == 1 and 'bad.wav' in txt and 'Traceback' not in txt

def test_silent_wav_is_unusable_but_its_image_defined(tmp_path):
    from heartnb.spectrogram import UnusableRecording, load_audio, melspec_db, spec_image
    sf.write(tmp_path/'silent.wav', np.zeros(8000, np.float32), 4000, subtype='PCM_16')
    with pytest.raises(UnusableRecording, match='unusable recording: silent'): wav2image(tmp_path/'silent.wav', size=64)
    img = spec_image(melspec_db(load_audio(tmp_path/'silent.wav', usable=False)[0]), size=64)
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
    r = run('predict', out/'model.pkl', wav, '--json', '--trust-pickle')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res[0]['file'] == wav and res[0]['label'] in m['classes']

def test_evaluate_on_a_folder_with_some_files_missing(trained, synth, tmp_path):
    part = tmp_path/'part'; shutil.copytree(synth, part)
    for f in sorted((part/'set_b').glob('murmur*'))[:2]: f.unlink()
    r = run('evaluate', trained, '--data', part, '--json')
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    n_labelled = 3*6 + 2                                   # clean + noisy; unlabelled recordings are not scored
    assert rep['n_recordings'] == n_labelled - 2 and np.array(rep['confusion_matrix']).sum() == n_labelled - 2
    assert rep['classes'] == ['extrastole','murmur','normal'] and set(rep['per_class']) == set(rep['classes'])
    assert json.loads(run('evaluate', trained, '--data', part, '--json', '--clean-only').stdout)['n_recordings'] == 18 - 2
    rc,txt = run_cli('evaluate', trained, '--data', part, '--subset', 'a')
    assert rc == 1 and 'set_a.csv' in txt and 'Traceback' not in txt

@pytest.fixture(scope='module')
def cvrun(synth, tmp_path_factory):
    "A 2-fold `heartnb cv` run on the synthetic data at 32 px, from random weights: (its folder, what it printed)."
    out = tmp_path_factory.mktemp('cvrun')/'cv'
    rc,txt = run_cli('cv', '--data', synth, '--out', out, '--k', 2, '--size', 32, '--bs', 8, '--freeze-epochs', 1, '--epochs', 1,
                     '--lr', 3e-3, '--no-pretrained', '--workers', 0, '--balance', 'weights')
    assert rc == 0, txt
    return out,txt

def test_cv_command_and_ensemble(synth, cvrun):
    out,txt = cvrun
    assert '2-fold patient cross-validation' in txt and '±' in txt
    cv = json.loads((out/'cv.json').read_text())
    assert len(cv['folds']) == 2 and cv['settings']['balance'] == 'weights'
    oof = pd.read_csv(out/'oof.csv', dtype={'patient': str})
    assert oof.path.is_unique and oof.groupby('patient').fold.nunique().max() == 1
    from heartnb.data import index_dataset
    from heartnb.predict import open_model, predict_probs
    ens,folds = open_model(out),[open_model(out/f'fold{i}') for i in range(2)]   # the fold models as an ensemble
    wavs = oof.path[:4].tolist()
    p0,p2 = predict_probs(ens, wavs),predict_probs(ens, wavs, tta=2)
    np.testing.assert_allclose(p0, (predict_probs(folds[0], wavs) + predict_probs(folds[1], wavs))/2, atol=1e-5)
    assert not np.allclose(p0, p2, atol=1e-4)                          # TTA's shifted passes change the average
    r = run('evaluate', out, '--data', synth, '--json', '--tta', 2)
    assert r.returncode == 0, r.stderr
    rep,df = json.loads(r.stdout),index_dataset(synth, 'b', include_noisy=True)
    y = df.label.map(rep['classes'].index).to_numpy()
    assert rep['tta'] == 2 and abs(rep['accuracy'] - (predict_probs(ens, df.path.tolist(), tta=2).argmax(1).numpy() == y).mean()) < 1e-9

@real
def test_real_data_evaluate_and_set_a(tmp_path):
    out = tmp_path/'a'
    rc,txt = run_cli('cv', '--out', out, '--subset', 'a', '--limit', 24, '--k', 2, '--size', 32, '--bs', 8, '--freeze-epochs', 1,
                     '--epochs', 0, '--lr', 3e-3, '--no-pretrained')
    assert rc == 0, txt
    cv = json.loads((out/'cv.json').read_text())
    assert cv['pooled']['classes'] == ['artifact','extrahls','murmur','normal'] and cv['pooled']['n'] == 24
    r = run('evaluate', out/'fold0', '--subset', 'a', '--json')
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep['n_recordings'] == 105 and np.array(rep['confusion_matrix']).shape == (4,4)

def test_png_level_keeps_the_pixels(synth, tmp_path):
    sizes = {}
    for lvl in (1, 0):
        rc,txt = run_cli('spectrograms', '--data', synth, '--out', tmp_path/f'l{lvl}', '--size', 64, '--workers', 0, '--png-level', lvl)
        assert rc == 0, txt
        sizes[lvl] = {p.relative_to(tmp_path/f'l{lvl}'): p for p in (tmp_path/f'l{lvl}').glob('*/*.png')}
    assert sizes[0].keys() == sizes[1].keys() and len(sizes[0]) > 0
    for k in sizes[0]:
        np.testing.assert_array_equal(np.asarray(Image.open(sizes[0][k])), np.asarray(Image.open(sizes[1][k])))
        assert sizes[0][k].stat().st_size > sizes[1][k].stat().st_size
    rc,txt = run_cli('spectrograms', '--data', synth, '--out', tmp_path/'bad', '--png-level', 10)
    assert rc == 2 and '--png-level' in txt and not (tmp_path/'bad').exists()

def test_progress_in_a_log_is_a_few_lines(synth, tmp_path):
    "Output to a pipe (a log, CI): a conversion prints a few plain lines, training one per epoch; no bars, no carriage returns"
    r = run('spectrograms', '--data', synth, '--out', tmp_path/'png', '--size', 32, '--workers', 2, process=True)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith('spectrograms:')]
    assert 1 <= len(lines) <= 11, r.stdout
    assert lines[-1].startswith('spectrograms: 18/18 files (100%)') and lines[-1].endswith('done'), lines[-1]
    assert '\r' not in r.stdout + r.stderr
    r = run('train', '--data', synth, '--out', tmp_path/'run', '--size', 32, '--bs', 8, '--freeze-epochs', 1, '--epochs', 2,
            '--no-pretrained', '--num-it', 5, '--workers', 0, process=True)   # lr_find too: it prints nothing
    assert r.returncode == 0, r.stderr
    assert '\r' not in r.stdout + r.stderr and '█' not in r.stdout + r.stderr
    table = [l.split() for l in r.stdout.splitlines() if l.split()[:1] == ['epoch'] or l[:1].isdigit()]
    assert [row[0] for row in table] == ['epoch', '0', 'epoch', '0', '1'], r.stdout   # frozen, then unfrozen: a header and a row per epoch
    assert len(table[1]) == len(table[0])

def test_rhythm_stack_command(synth, cvrun, tmp_path):
    "`heartnb stack` on a cv run: a model that `predict` and `evaluate` take, equal to its parts done by hand (12_rhythm)."
    from heartnb.data import index_dataset
    from heartnb.predict import open_model, predict_probs
    from heartnb.rhythm import RhythmStack, stack_probs, rhythm_features, gate_noisy
    from heartnb.spectrogram import load_audio
    out,st = cvrun[0],tmp_path/'stack'
    rc,txt = run_cli('stack', out, '--out', st, '--data', synth)
    assert rc == 0 and 'stacked' in txt and 'CNN alone' in txt, txt
    s,oof = json.loads((st/'stack.json').read_text()),pd.read_csv(out/'oof.csv')
    assert s['classes'] == ['extrastole','murmur','normal'] and s['n_recordings'] == len(oof) and s['k'] == 2 and (st/s['cnn'][0]).resolve() == out.resolve()
    assert s['pretrained'][0]['weights'] == 'none' and set(s['cv']) == {'cnn', 'stacked'}
    so = pd.read_csv(st/'stack_oof.csv')
    assert sorted(so.path) == sorted(oof.path) and set(so.predicted) <= set(s['classes']) and (so.fold.values >= 0).all()
    stk = open_model(st)
    assert isinstance(stk, RhythmStack)
    wavs = oof.path[:4].tolist()
    p = predict_probs(stk, wavs)
    f = np.array([[rhythm_features(load_audio(w, 4000, usable=False)[0], 4000)[k] for k in s['params']['features']] for w in wavs])
    np.testing.assert_allclose(p, stack_probs(s['params'], predict_probs(open_model(out), wavs).numpy(), f), atol=1e-5)   # by hand
    assert np.allclose(p.sum(1), 1) and not np.allclose(p, predict_probs(open_model(out), wavs), atol=1e-3)
    r = run('predict', st, *wavs, '--json')
    assert r.returncode == 0, r.stderr
    assert [d['label'] for d in json.loads(r.stdout)] == [s['classes'][i] for i in p.argmax(1)]
    r = run('evaluate', st, '--data', synth, '--json')
    assert r.returncode == 0 and json.loads(r.stdout)['n_recordings'] == len(index_dataset(synth, 'b', include_noisy=True)), r.stderr
    gt = tmp_path/'gated'                                   # with the quality gate: where it finds a recording noisy, the CNN's answer
    rc,txt = run_cli('stack', out, '--out', gt, '--data', synth, '--gate')
    assert rc == 0 and 'quality gate: out-of-fold AUC' in txt and 'gated' in txt, txt
    sg = json.loads((gt/'stack.json').read_text())
    g,idx = sg['gate'],index_dataset(synth, 'b', include_noisy=True)
    nz = idx[idx.sublabel.fillna('') != ''].path.tolist()
    assert g['classes'] == ['clean', 'noisy'] and g['cv']['n_noisy'] == len(nz) == 2 and (gt/'rhythm_noisy.csv').exists()
    wv = wavs + nz
    feats = lambda names: np.array([[rhythm_features(load_audio(w, 4000, usable=False)[0], 4000)[k] for k in names] for w in wv])
    cnn,held = predict_probs(open_model(out), wv).numpy(),gate_noisy(g, feats(g['features']))
    np.testing.assert_allclose(predict_probs(open_model(gt), wv), np.where(held[:, None], cnn, stack_probs(sg['params'], cnn, feats(sg['params']['features']))), atol=1e-5)
    clean = tmp_path/'clean'; shutil.copytree(synth, clean)     # a dataset without noisy recordings: no gate, and nothing left behind
    for f in clean.rglob('*noisy*.wav'): f.unlink()
    rc,txt = run_cli('stack', out, '--out', tmp_path/'nogate', '--data', clean, '--gate')
    assert rc == 1 and 'no set_b noisy recordings' in txt and 'Traceback' not in txt and not (tmp_path/'nogate').exists(), txt
    rc,txt = run_cli('stack', tmp_path/'absent', '--out', tmp_path/'bad')
    assert rc == 1 and 'no oof.csv' in txt and 'Traceback' not in txt and not (tmp_path/'bad').exists()
    moved = tmp_path/'a'/'b'; moved.mkdir(parents=True); (moved/'stack.json').write_text((st/'stack.json').read_text())
    rc,txt = run_cli('predict', moved, wavs[0])
    assert rc == 1 and 'not there' in txt and 'Traceback' not in txt

def test_ensemble_command(synth, cvrun, tmp_path):
    "`heartnb ensemble` of a PNG-path and an audio-path run on the same folds: out-of-fold scores of their mean probabilities, and a model that predicts that mean (12_rhythm)."
    from heartnb.predict import open_model, predict_probs
    from heartnb.rhythm import RhythmStack, cv_oof
    png,aud,ens = cvrun[0],tmp_path/'audio',tmp_path/'ens'
    rc,txt = run_cli('cv', '--data', synth, '--out', aud, '--k', 2, '--size', 32, '--bs', 8, '--freeze-epochs', 1, '--epochs', 1, '--lr', 3e-3,
                     '--no-pretrained', '--workers', 0, '--balance', 'weights', '--input', 'audio', '--duration', 2)
    assert rc == 0, txt
    rc,txt = run_cli('ensemble', png, aud, '--out', ens)
    assert rc == 0 and 'ensemble of 2 CNN run(s)' in txt and 'CNN mean' in txt and 'stacked' not in txt, txt
    s,oof = json.loads((ens/'stack.json').read_text()),cv_oof([png, aud])
    assert s['kind'] == 'heartnb ensemble' and s['params'] is None and s['n_recordings'] == len(oof) and not (ens/'rhythm_features.csv').exists()
    so = pd.read_csv(ens/'stack_oof.csv').sort_values('path')
    assert list(so.predicted) == list(oof.predicted) and list(so.cnn) == list(oof.predicted)      # the arg-max of the mean probabilities
    acc = [(g.label == g.predicted).mean() for _,g in oof.groupby('fold')]
    assert np.isclose(s['cv']['cnn']['accuracy']['mean'], np.mean(acc))
    m,wavs = open_model(ens),oof.path[:4].tolist()
    assert isinstance(m, RhythmStack) and m.vocab == s['classes']
    p = predict_probs(m, wavs)
    np.testing.assert_allclose(p, (predict_probs(open_model(png), wavs) + predict_probs(open_model(aud), wavs))/2, atol=1e-5)
    r = run('predict', ens, *wavs, '--json')
    assert r.returncode == 0 and [d['label'] for d in json.loads(r.stdout)] == [s['classes'][i] for i in p.argmax(1)], r.stderr
    rc,txt = run_cli('ensemble', png, '--out', tmp_path/'one')
    assert rc == 1 and 'two or more' in txt and not (tmp_path/'one').exists(), txt
    from heartnb.data import HeartnbError
    from heartnb.rhythm import stack_job
    with pytest.raises(HeartnbError, match='rhythm features'): stack_job(tmp_path/'gated', [png, aud], gate=True, rhythm=False)   # a gate needs them
    assert not (tmp_path/'gated').exists()
