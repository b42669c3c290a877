"The audio path (`--input audio`, `heartnb.audio`) end to end, on synthetic data and, with HEARTNB_DATA, on real recordings."
import json, os
import numpy as np, pandas as pd, pytest, torch
from conftest import run, run_cli
from heartnb.data import index_dataset
from heartnb.spectrogram import load_audio

real = pytest.mark.skipif(not os.environ.get('HEARTNB_DATA'), reason='HEARTNB_DATA not set')

def test_cv_audio_matches_png_folds(synth, tmp_path):
    "`heartnb cv --input audio` uses the same folds as the PNG path and its fold models predict through `evaluate`"
    kw = ['--data', synth, '--k', 2, '--size', 32, '--bs', 8, '--freeze-epochs', 1, '--epochs', 0, '--lr', 3e-3, '--no-pretrained']
    assert run_cli('cv', '--out', tmp_path/'png', '--workers', 0, *kw)[0] == 0
    rc,txt = run_cli('cv', '--out', tmp_path/'aud', '--input', 'audio', '--duration', 2, '--channels', 3, *kw)
    assert rc == 0, txt
    folds = [pd.read_csv(tmp_path/r/'oof.csv').set_index('path').fold.sort_index() for r in ('png','aud')]
    assert folds[0].equals(folds[1])
    assert json.loads((tmp_path/'aud'/'fold0'/'model.json').read_text())['n_in'] == 3
    r = run('evaluate', tmp_path/'aud', '--data', synth, '--json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['n_recordings'] == 20

def test_png_and_audio_spectrograms_agree(synth):
    "The two mel-spectrogram implementations, one per path: `melspec_db` (librosa, PNG path) and `MelSpecDB` (torch, audio path)"
    from heartnb.spectrogram import melspec_db, spec_image
    from heartnb.audio.core import MelSpecDB, MelSpecImage
    m = MelSpecDB('heart')
    for p in index_dataset(synth).groupby('label').head(2).path:
        y,_ = load_audio(p, m.cfg.sr)
        a,b = melspec_db(y, m.cfg),m(torch.from_numpy(y))[0,0].numpy()
        assert a.shape == b.shape
        d = np.abs(a-b); assert d.mean() < 1e-3 and d.max() < 0.05, (p, d.mean(), d.max())
        img = spec_image(a, m.cfg.top_db, None)/255                          # the PNG's pixels, and the audio path's image
        assert np.abs(img - MelSpecImage('heart')(torch.from_numpy(y))[0,0].numpy()).max() <= 1/255 + 1e-6

@real
def test_torch_melspec_matches_librosa_on_real_recordings():
    "MelSpecDB (torch) vs librosa's melspectrogram + power_to_db on 3 recordings per class of set_b and set_a: mean < 1e-3 dB, max < 0.01 dB"
    import librosa
    from heartnb.audio.core import MelSpecDB
    for subset in ('b', 'a'):
        m = MelSpecDB('heart'); c = m.cfg
        for p in index_dataset(subset=subset).groupby('label').head(3).path:
            y,_ = load_audio(p, c.sr)
            S = librosa.feature.melspectrogram(y=y, sr=c.sr, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels,
                                               fmin=c.fmin, fmax=c.fmax, power=2., center=True, pad_mode='constant')
            ref = librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=c.top_db)
            d = np.abs(m(torch.from_numpy(y))[0,0].numpy() - ref)
            assert d.mean() < 1e-3 and d.max() < 0.01, (p, d.mean(), d.max())

@real
def test_real_data_audio_train_and_predict(tmp_path):
    out = tmp_path/'aud'
    rc,txt = run_cli('train', '--out', out, '--input', 'audio', '--subset', 'b', '--limit', 30, '--size', 64, '--bs', 8,
                     '--freeze-epochs', 1, '--epochs', 1, '--lr', 3e-3, '--no-pretrained')
    assert rc == 0, txt
    m = json.loads((out/'metrics.json').read_text())
    assert m['input'] == 'audio' and {k: m['audio'][k] for k in ('duration','channels','augment')} == dict(duration=5.0, channels=1, augment=False)
    assert m['n_train'] + m['n_valid'] == 30 and np.array(m['confusion_matrix']).sum() == m['n_valid']
    assert not (out/'spectrograms').exists()
    wavs = pd.read_csv(out/'predictions.csv').path[:3].tolist()
    r = run('predict', out, *wavs, '--json')
    assert r.returncode == 0, r.stderr
    assert [d['file'] for d in json.loads(r.stdout)] == wavs
