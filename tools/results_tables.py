"""Print the README's results tables as Markdown, from the summaries committed in `nbs/results` (no run folders needed).

    python tools/results_tables.py          # paste into nbs/index.ipynb's Results section, then regenerate README.md
"""
import json, sys
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from heartnb.transfer import cv_table

RES = ROOT/'nbs'/'results'

def md(df:pd.DataFrame)->str:
    "A DataFrame as a Markdown table (no index)"
    rows = [list(map(str, df.columns))] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    return '\n'.join(['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|'*len(rows[0])] + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])

def transfer_table(rows:dict)->str:
    "The cross-validation rows {name: summary folder name}, as `11_transfer` shows them"
    t = cv_table({k: RES/v for k,v in rows.items()})
    rc = [c for c in t.columns if c.startswith('recall ')]
    t['recall per class'] = t[rc].apply(lambda r: ' / '.join(f"{c[7:]} {v}" for c,v in r.items() if isinstance(v, str) and v != '–'), axis=1)
    return md(t[['run', 'input', 'weights', 'accuracy', 'balanced acc.', 'macro-F1', 'recall per class', 'baseline acc./bal./F1', 's/epoch']])

def noisy_table(rows:dict)->str:
    "The noisy-recordings check (`noisy_check`) of each row {name: results/noisy/<name>.json}"
    d = {k: json.loads((RES/'noisy'/f'{v}.json').read_text()) for k,v in rows.items() if (RES/'noisy'/f'{v}.json').exists()}
    if not d: return '(no noisy-recordings results yet: run tools/figures.py nbs/11_transfer.ipynb)'
    t = pd.DataFrame(d).T.reset_index(names='model')
    for c in t.columns[2:]:
        if c not in ('how',): t[c] = t[c].map(lambda v: f"{v:.2f}" if isinstance(v, float) else v)
    return md(t[['model', 'how', 'accuracy', 'balanced_accuracy', 'recall/normal', 'recall/murmur', 'called/extrastole']])

if __name__ == '__main__':
    nb = json.loads((ROOT/'nbs'/'11_transfer.ipynb').read_text())
    ns = {}
    for c in nb['cells']:                      # the notebook's own row lists: ROWS and NOISY
        s = ''.join(c['source'])
        for name in ('ROWS', 'NOISY'):
            if s.startswith(f'{name} = ') or f'\n{name} = ' in s:
                code = s[s.index(f'{name} = '):]
                exec(code[:code.index('}')+1], ns)
    print(transfer_table(ns['ROWS'])); print(); print(noisy_table(ns['NOISY']))
