"""Issue 15, from the command line: each class of hostile or careless use, tried with several cases.

1 never delete what heartnb did not write; 2 one run per folder, a cache that checks content; 3 no pickle without
consent, a bounded model.json; 4 no answer without a signal; 5 NaN never leaves; 6 options checked first; 7 every
failure a message; 8 atomic, readable writes; 9 dataset paths stay in the dataset. The library-level cases (more of
them, faster) are in nbs/07_bad_inputs.ipynb."""
import errno, json, os, pickle, re, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, soundfile as sf
from conftest import run, run_cli, HEARTNB
from heartnb.synth import make_synth_dataset, make_synth_layout, synth_pcg
from heartnb.safety import writing, MARK

def ok(rc, txt, *contains):
    "A clean failure: exit code 1, a message holding every string of `contains`, no traceback"
    assert rc == 1 and 'Traceback' not in txt, txt
    for c in contains: assert c in txt, (c, txt)

def opts_exist(cmd, txt):
    "Every --option a message suggests is one `heartnb cmd` accepts"
    helptxt = run_cli(cmd, '--help')[1]
    for o in set(re.findall(r'(--[a-z][a-z-]+)', txt)): assert o in helptxt, f"heartnb {cmd} suggests {o}, which it does not accept: {txt}"

@pytest.fixture
def data(synth, tmp_path):
    "A private copy of the synthetic set_b (tests may damage it)"
    d = tmp_path/'data'; shutil.copytree(synth, d)
    return d

# 1. Never delete or overwrite what heartnb did not write
def test_foreign_folders_are_never_touched(data, tmp_path):
    photos = tmp_path/'mine'/'photos'; photos.mkdir(parents=True)
    for i in range(3): (photos/f'p{i}.png').write_bytes(b'my photo')
    for cmd in (['spectrograms', '--size', 32, '--workers', 0], ['train', '--no-pretrained', '--epochs', 0, '--freeze-epochs', 1]):
        rc,txt = run_cli(*cmd, '--data', data, '--out', tmp_path/'mine')
        ok(rc, txt, str(tmp_path/'mine'), 'heartnb did not write (photos)')
    ck = tmp_path/'run'/'checkpoints'; ck.mkdir(parents=True); (ck/'keep.pth').write_bytes(b'x')
    ok(*run_cli('train', '--data', data, '--out', tmp_path/'run', '--no-pretrained'), 'checkpoints')
    ok(*run_cli('cv', '--data', data, '--out', tmp_path/'run', '--no-pretrained'), 'checkpoints')
    assert sorted(p.name for p in (tmp_path/'mine').rglob('*')) == ['p0.png', 'p1.png', 'p2.png', 'photos']
    assert (ck/'keep.pth').read_bytes() == b'x' and not (tmp_path/'run'/MARK).exists()
    for cmd in ('spectrograms', 'train', 'cv'): ok(*run_cli(cmd, '--data', data, '--out', ''), 'an empty name')
    (tmp_path/'afile').write_text('notes')
    ok(*run_cli('spectrograms', '--data', data, '--out', tmp_path/'afile'), 'is a file')
    assert (tmp_path/'afile').read_text() == 'notes'
    # its own folder: a settings change removes heartnb's PNGs, never a file someone added
    out = tmp_path/'png'
    assert run_cli('spectrograms', '--data', data, '--out', out, '--size', 32, '--workers', 0)[0] == 0
    (out/'normal'/'my_notes.png').write_bytes(b'mine')
    rc,txt = run_cli('spectrograms', '--data', data, '--out', out, '--size', 48, '--workers', 0)
    assert rc == 0 and '18 converted' in txt, txt
    assert (out/'normal'/'my_notes.png').read_bytes() == b'mine'
    ok(*run_cli('cv', '--data', data, '--out', out, '--no-pretrained'), 'heartnb spectrograms folder, not a cv folder')

# 2. One run per folder; a cache that notices changed PNGs
def test_second_run_on_a_folder_fails_at_once(data, tmp_path):
    for kind,cmd in (('spectrograms', ['spectrograms', '--size', 32]), ('run', ['train', '--no-pretrained']), ('cv', ['cv', '--no-pretrained'])):
        out = tmp_path/kind
        with writing(out, kind):                          # this test process holds the lock, as a running job would
            t = time.time()
            rc,txt = run_cli(*cmd, '--data', data, '--out', out, process=True)   # another process, as a second job is
            ok(rc, txt, f'{out} is in use by another heartnb run', f'process {os.getpid()}')
            assert time.time() - t < 60
    rc,txt = run_cli('spectrograms', '--data', data, '--out', tmp_path/'spectrograms', '--size', 32, '--workers', 0)
    assert rc == 0, txt                                  # released: the folder is free again

def test_cache_notices_changed_pngs(data, tmp_path):
    out = tmp_path/'png'
    args = ('spectrograms', '--data', data, '--out', out, '--size', 32, '--workers', 0)
    assert run_cli(*args)[0] == 0
    pngs = sorted(out.glob('*/*.png'))
    pngs[0].write_bytes(pngs[0].read_bytes()[:50])        # truncated
    pngs[1].write_bytes(pngs[2].read_bytes())             # another valid PNG in its place
    os.utime(pngs[3], (0, 0))                             # only its timestamp: still the same bytes
    rc,txt = run_cli(*args)
    assert rc == 0 and '2 converted, 16 up to date' in txt, txt

# 3. No code from a model file without consent; a bounded model.json
class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

def test_pickles_need_consent_and_model_json_is_bounded(trained, synth, tmp_path):
    marker = tmp_path/'pwned'
    evil = tmp_path/'evil.pkl'; evil.write_bytes(pickle.dumps(_Evil(marker)))
    wav = sorted((synth/'set_b').glob('normal__*.wav'))[0]
    for cmd,args in (('predict', [evil, wav]), ('evaluate', [evil, '--data', synth])):
        rc,txt = run_cli(cmd, *args)
        ok(rc, txt, 'is a pickle', 'model.safetensors', '--trust-pickle')
        opts_exist(cmd, txt)
    for name in ('evil.pth', 'model.bin'):
        shutil.copy(evil, tmp_path/name)
        ok(*run_cli('predict', tmp_path/name, wav), 'is a pickle')
    assert not marker.exists()
    meta = json.loads((trained/'model.json').read_text())
    for field,value in (('arch', 'vit_giant_patch14_clip_224'), ('size', 10**6), ('spectrogram', dict(meta['spectrogram'], n_fft=2**26)),
                        ('spectrogram', dict(meta['spectrogram'], sr=10**9)), ('n_in', 7)):
        bad = tmp_path/f'bad_{field}'; bad.mkdir(exist_ok=True)
        shutil.copy(trained/'model.safetensors', bad/'model.safetensors')
        (bad/'model.json').write_text(json.dumps(dict(meta, **{field: value})))
        ok(*run_cli('predict', bad, wav), field, 'is not accepted')

# 4. No confident answer without a signal
def _unusable(folder:Path)->list:
    "All-zero, 1 sample, a constant, 0.2 s, an absurd sample rate, an absurd channel count"
    folder.mkdir(parents=True, exist_ok=True)
    y = synth_pcg('normal', sr=4000, duration=2., seed=0)
    sf.write(folder/'zeros.wav', np.zeros(8000, np.float32), 4000, subtype='PCM_16')
    sf.write(folder/'one_sample.wav', y[:1], 4000, subtype='PCM_16')
    sf.write(folder/'constant.wav', np.full(8000, 0.3, np.float32), 4000, subtype='PCM_16')
    sf.write(folder/'short.wav', y[:800], 4000, subtype='PCM_16')
    sf.write(folder/'rate.wav', y, 4000, subtype='PCM_16')
    b = bytearray((folder/'rate.wav').read_bytes()); b[24:28] = (2**31-1).to_bytes(4, 'little'); (folder/'rate.wav').write_bytes(bytes(b))
    sf.write(folder/'channels.wav', y, 4000, subtype='PCM_16')
    b = bytearray((folder/'channels.wav').read_bytes()); b[22:24] = (1000).to_bytes(2, 'little'); (folder/'channels.wav').write_bytes(bytes(b))
    return sorted(folder.glob('*.wav'))

def test_no_label_without_a_signal(trained, synth, data, tmp_path):
    bad = _unusable(tmp_path/'bad')
    good = sorted((synth/'set_b').glob('murmur__*.wav'))[0]
    r = run('predict', trained, good, *bad, '--json')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    res = {Path(x['file']).name: x for x in json.loads(r.stdout)}
    assert res[good.name]['label'] in ('extrastole', 'murmur', 'normal')
    for f in bad: assert res[f.name]['label'] is None and res[f.name]['probabilities'] is None, res[f.name]
    for f in ('zeros', 'one_sample', 'constant', 'short'): assert res[f'{f}.wav']['error'].startswith('unusable recording: '), res[f'{f}.wav']
    rc,txt = run_cli('predict', trained, *bad)
    ok(rc, txt, f"{tmp_path/'bad'/'zeros.wav'}\tunusable recording: silent", f"{tmp_path/'bad'/'short.wav'}\tunusable recording: 0.2 s long")
    # in a dataset: conversion, training on audio and evaluation name every one of them
    victims = sorted((data/'set_b').glob('normal__*.wav'))[:len(bad)]
    for v,b in zip(victims, bad): shutil.copy(b, v)
    for cmd,extra in (('spectrograms', ['--size', 32, '--workers', 0]), ('train', ['--input', 'audio', '--no-pretrained']),
                      ('evaluate', [])):
        args = [trained, '--data', data] if cmd == 'evaluate' else ['--data', data, '--out', tmp_path/f'o_{cmd}', *extra]
        rc,txt = run_cli(cmd, *args)
        ok(rc, txt, f'{len(bad)} of', *(v.name for v in victims))
        opts_exist(cmd, txt)

# 5. NaN never leaves heartnb
def test_nan_models_are_refused(trained, synth, tmp_path):
    from safetensors.torch import load_file, save_file
    wav = sorted((synth/'set_b').glob('normal__*.wav'))[0]
    sd = load_file(trained/'model.safetensors')
    meta = json.loads((trained/'model.json').read_text())
    cases = {'nan_weights': ({k: (v.clone().fill_(float('nan')) if k.endswith('.weight') and v.is_floating_point() else v) for k,v in sd.items()}, meta),
             'inf_weight': ({k: (v.clone().fill_(float('inf')) if k == '1.8.weight' else v) for k,v in sd.items()}, meta),
             'zero_std': (sd, dict(meta, normalize=dict(meta['normalize'], std=[0.]*len(meta['normalize']['std'])))),
             'nan_mean': (sd, dict(meta, normalize=dict(meta['normalize'], mean=[float('nan')]*len(meta['normalize']['mean']))))}
    for name,(w,m) in cases.items():
        d = tmp_path/name; d.mkdir()
        save_file(w, d/'model.safetensors'); (d/'model.json').write_text(json.dumps(m))
        rc,txt = run_cli('predict', d, wav)
        ok(rc, txt)
        assert any(s in txt for s in ('NaN', 'normalize')), txt
        for c in ('extrastole', 'murmur', 'normal'): assert f'\t{c}' not in txt
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'nanlr', '--lr', 'nan', '--no-pretrained')
    ok(rc, txt, '--lr nan is out of range')
    assert not (tmp_path/'nanlr').exists()

# 6. Options checked before any work
@pytest.mark.parametrize('cmd,opt,value', [
    ('train', '--epochs', -1), ('train', '--freeze-epochs', -3), ('train', '--lr', 0), ('train', '--lr', 'inf'), ('train', '--lr-mult', 0),
    ('train', '--duration', 0.01), ('train', '--size', 0), ('train', '--valid-pct', 1.5), ('train', '--valid-pct', 0), ('train', '--bs', 0),
    ('train', '--workers', -1), ('train', '--seed', -5), ('train', '--num-it', 0), ('train', '--duration', 0),
    ('cv', '--k', 1), ('cv', '--tta', -1), ('cv', '--test-pct', 0.9), ('spectrograms', '--size', 0), ('spectrograms', '--workers', -2),
    ('predict', '--tta', -1), ('evaluate', '--tta', 1000)])
def test_options_are_checked_first(synth, tmp_path, cmd, opt, value):
    args = {'predict': ['model.safetensors', 'x.wav'], 'evaluate': ['model.safetensors', '--data', synth]}.get(cmd, ['--data', synth, '--out', tmp_path/'o'])
    t = time.time()
    rc,txt = run_cli(cmd, *args, opt, value)
    ok(rc, txt, f"{opt} ", 'out of range')
    assert time.time() - t < 30 and not (tmp_path/'o').exists()

def test_option_combinations(synth, tmp_path):
    ok(*run_cli('train', '--data', synth, '--out', tmp_path/'o', '--split', 'patient', '--valid-pct', 0.8), '--split patient')
    ok(*run_cli('cv', '--data', synth, '--out', tmp_path/'o', '--k', 5, '--limit', 3), '--limit 3')

# 7. Every failure a message, naming only options the command has
def test_failures_are_messages(trained, synth, data, tmp_path):
    csv = data/'set_b.csv'
    csv.write_text('')
    ok(*run_cli('spectrograms', '--data', data, '--out', tmp_path/'a'), 'set_b.csv is empty')
    csv.write_bytes('fname,label\n'.encode() + 'set_b/caf\xe9.wav,normal\n'.encode('latin-1'))
    ok(*run_cli('spectrograms', '--data', data, '--out', tmp_path/'a'), 'not UTF-8')
    ok(*run_cli('train', '--data', data, '--out', tmp_path/'b', '--no-pretrained'), 'not UTF-8')
    long = tmp_path/'eleven_minutes.wav'
    sf.write(long, np.tile(synth_pcg('normal', sr=4000, duration=5., seed=1), 132), 4000, subtype='PCM_16')
    rc,txt = run_cli('predict', trained, long)
    ok(rc, txt, 'eleven_minutes.wav', '11.0 min long')
    if os.geteuid() != 0:
        locked = tmp_path/'locked.wav'; shutil.copy(sorted((synth/'set_b').glob('normal__*.wav'))[0], locked); locked.chmod(0)
        ok(*run_cli('predict', trained, locked), 'permission denied')
    # a bad recording: `spectrograms` suggests --skip-bad, `train` (which has no such option) does not
    shutil.copy(synth/'set_b.csv', csv)
    (sorted((data/'set_b').glob('normal__*.wav'))[0]).write_bytes(b'RIFF junk')
    for cmd in ('spectrograms', 'train'):
        rc,txt = run_cli(cmd, '--data', data, '--out', tmp_path/f'c_{cmd}', '--size', 32, '--workers', 0, *(['--no-pretrained'] if cmd == 'train' else []))
        ok(rc, txt, 'could not be converted')
        opts_exist(cmd, txt)
        assert ('--skip-bad' in txt) == (cmd == 'spectrograms'), txt

def test_full_disk_is_a_message(synth, tmp_path, monkeypatch, capsys):
    "A full disk, simulated: every write of a PNG fails with ENOSPC"
    from heartnb import cli
    def full(self, data): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(Path, 'write_bytes', full)
    monkeypatch.setattr(sys, 'argv', ['heartnb', 'spectrograms', '--data', str(synth), '--out', str(tmp_path/'png'), '--workers', '0', '--size', '32'])
    with pytest.raises(SystemExit) as e: cli.main()
    msg = str(e.value.code)
    assert 'no space left on device' in msg and str(tmp_path/'png') in msg, msg
    assert not list((tmp_path/'png').glob('**/*.tmp'))

# 8. Writes are atomic, and readable as the umask says
def test_run_files_follow_the_umask(trained):
    mask = os.umask(0o022); os.umask(mask)
    for f in ('model.safetensors', 'model.json', 'model.pkl', 'metrics.json', 'settings.json', 'predictions.csv'):
        assert (trained/f).stat().st_mode & 0o777 == 0o666 & ~mask, f
    assert not list(trained.glob('**/*.tmp'))

# 9. Dataset paths stay in the dataset
def test_dataset_paths_stay_inside(tmp_path):
    d = make_synth_layout(tmp_path/'man', 'csv', n_per_class=3)
    outside = tmp_path/'secret.wav'; shutil.copy(sorted(d.glob('*/*.wav'))[0], outside)
    man = pd.read_csv(d/'manifest.csv', dtype=str)
    for fname in (str(outside), '../secret.wav', 'normal/../../secret.wav'):
        pd.concat([man, man.iloc[[0]].assign(path=fname)]).to_csv(d/'manifest.csv', index=False)
        rc,txt = run_cli('train', '--dataset', 'csv', '--data', d, '--out', tmp_path/'run', '--no-pretrained')
        ok(rc, txt, 'outside the dataset folder', fname)
    # the same recording twice (another spelling) is one row; two recordings with one stem and label get two PNGs
    (d/'more').mkdir(); shutil.copy(d/man.path[0], d/'more'/Path(man.path[0]).name)
    extra = pd.DataFrame(dict(path=['./' + man.path[0], 'more/' + Path(man.path[0]).name], label=[man.label[0]]*2, patient=['p9', 'p9']))
    pd.concat([man, extra]).to_csv(d/'manifest.csv', index=False)
    from heartnb.data import index_dataset, DuplicateWarning
    from heartnb.spectrogram import spectrogram_images
    with pytest.warns(DuplicateWarning, match='more than one row'): df = index_dataset(d, dataset='csv')
    assert len(df) == len(man) + 1
    m = spectrogram_images(df, tmp_path/'png', size=32, workers=0, progress=False)
    assert m.png.is_unique and len(list((tmp_path/'png').glob('*/*.png'))) == len(df)
