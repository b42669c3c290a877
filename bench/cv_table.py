"Print the README's cross-validation table (markdown) from `heartnb cv` folders: python bench/cv_table.py runs/cv/*/"
import json, sys
from pathlib import Path

def ms(d, k): return f"{d[k]['mean']:.3f} ± {d[k]['std']:.3f}" if k in d else '–'

def command(s):
    "The `heartnb cv` command line that reproduces a run, from its settings.json"
    opts = [f"--subset {s['subset']}", f"--split {s['split']}", f"--k {s['k']}", f"--size {s['size']}", f"--bs {s['bs']}",
            f"--freeze-epochs {s['freeze_epochs']}", f"--epochs {s['epochs']}", f"--seed {s['seed']}"]
    if s.get('lr'): opts.append(f"--lr {s['lr']:g}")
    if s.get('lr_mult', 100) != 100: opts.append(f"--lr-mult {s['lr_mult']:g}")
    if not s['pretrained']: opts.append('--no-pretrained')
    if s.get('balance'): opts.append(f"--balance {s['balance']}")
    if s.get('window'): opts.append(f"--window {s['window']:g}")
    if s.get('test_pct'): opts.append(f"--test-pct {s['test_pct']:g} --tta {s['tta']}")
    if s.get('input') == 'audio':
        opts.append(f"--input audio --duration {s['duration']:g}" + (f" --channels {s['channels']}" if s['channels'] != 1 else '')
                    + (' --augment' if s['augment'] else ''))
    return 'heartnb cv --data $HEARTNB_DATA --out OUT ' + ' '.join(opts)

rows = []
print("| set | split | balance | input | accuracy | balanced acc. | macro-F1 | recall per class | baseline acc. / bal. / F1 | s per fold |")
print("|---|---|---|---|---|---|---|---|---|---|")
for d in map(Path, sys.argv[1:]):
    if not (d/'cv.json').exists(): continue
    r = json.loads((d/'cv.json').read_text()); s,su,b = r['settings'],r['summary'],r['baseline']
    rec = ' / '.join(f"{c} {su['recall/'+c]['mean']:.2f}±{su['recall/'+c]['std']:.2f}" for c in r['pooled']['classes'])
    inp = (f"audio, {s['duration']:g} s clips, {s['channels']} ch" + (", augmented" if s['augment'] else "") if s.get('input') == 'audio'
           else f"{s['window']:g} s windows" if s.get('window') else 'whole recording')
    print(f"| {s['subset']} | {s['split']} | {s.get('balance') or 'none'} | {inp} | {ms(su,'accuracy')} | {ms(su,'balanced_accuracy')} | "
          f"{ms(su,'macro_f1')} | {rec} | {b['accuracy']:.3f} / {b['balanced_accuracy']:.3f} / {b['macro_f1']:.3f} | {r['seconds']['mean_per_fold']:.0f} |")
    rows.append((d.name, command(s)))
print()
for n,c in rows: print(f"{n}: {c}")
