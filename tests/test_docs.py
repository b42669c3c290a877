"""The docs build, checked without Quarto: nbdev's processing of every notebook (`.ci/docs.py`, what `nbdev-proc-nbs`
does), the `Docs:` links of the modules, and a few pages rendered with nbconvert: they hold the API (nbdev's `show_doc`
output), the figures the notebooks have saved, and a headless Chromium screenshot of each is a page, not a blank."""
import importlib, inspect, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'.ci'))
import docs

PAGES = ['index', '01_spectrogram', '04_interpret', '05_predict']
# The figures each lesson keeps (saved by `tools/figures.py` from the real data; at least this many images, and players)
FIGURES = {'00_data': (2, 3), '01_spectrogram': (2, 0), '02_dataloaders': (1, 0), '03_train': (2, 0), '04_interpret': (4, 0),
           '05_predict': (1, 0), '08_audio_front': (2, 0), '08a_audio_core': (3, 1), '09_audio_augment': (2, 1),
           '11_transfer': (1, 0), '12_rhythm': (2, 0)}
BUDGET = 1_000_000      # bytes per notebook
CHROMIUM = next((p for p in (shutil.which('chromium'), shutil.which('chromium-browser'), shutil.which('google-chrome'),
                             '/usr/bin/chromium') if p and Path(p).exists()), None)

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Run `.ci/docs.py`: process every notebook, check the links, render `PAGES`; the output folder."
    out = tmp_path_factory.mktemp('docs')
    r = subprocess.run([sys.executable, str(ROOT/'.ci'/'docs.py'), str(out), *PAGES], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 0, f"docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return out

def nb_json(name): return json.loads((ROOT/'nbs'/f'{name}.ipynb').read_text(encoding='utf-8'))

def saved_images(name) -> int:
    "How many image outputs the notebook `name` has saved."
    return sum('image/png' in o.get('data', {}) or 'image/jpeg' in o.get('data', {})
               for c in nb_json(name)['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []))

def saved_players(name) -> int:
    "How many audio players (`IPython.display.Audio`) the notebook `name` has saved."
    return sum('<audio' in ''.join(o.get('data', {}).get('text/html', ''))
               for c in nb_json(name)['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []))

def test_notebooks_keep_their_figures_and_stay_small():
    for name,(n_img,n_audio) in FIGURES.items():
        assert saved_images(name) >= n_img, f"{name}: {saved_images(name)} saved figures, {n_img} expected: run tools/figures.py"
        assert saved_players(name) >= n_audio, f"{name}: {saved_players(name)} audio players, {n_audio} expected"
    for nb in (ROOT/'nbs').glob('*.ipynb'):
        assert nb.stat().st_size <= BUDGET, f"{nb.name}: {nb.stat().st_size/1e6:.2f} MB, over the 1 MB budget"
        outs = [o for c in json.loads(nb.read_text())['cells'] for o in c.get('outputs', [])]
        assert not any('\r' in ''.join(o.get('text', '')) for o in outs), f"{nb.name}: progress bars saved"

def test_readme_names_what_the_code_accepts():
    "The README's lists follow the code: every architecture the safe loader builds, and an install extra per packaged ImageNet weights."
    from heartnb.predict import SAFE_ARCHS
    from heartnb.backbones import LITE_PACKAGES, _lite_install
    readme = re.sub(r'\s+', ' ', (ROOT/'README.md').read_text(encoding='utf-8'))
    safe = readme[readme.index('heartnb.predict.SAFE_ARCHS'):][:400]    # the sentence that lists them
    for a in SAFE_ARCHS:
        short = re.sub(r'^resnet(\d+)$', r'\1', a)               # resnet18/34/50/101 is written once
        assert short in safe, f"README: the safe loader's list lacks {a} (heartnb.predict.SAFE_ARCHS): edit nbs/index.ipynb"
    try: import tomllib                                          # Python 3.11+
    except ImportError: pytest.skip("the extras are read with tomllib (Python 3.11+); the README's list was checked")
    extras = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['optional-dependencies']
    for arch,pkg in LITE_PACKAGES.items():
        name = _lite_install(arch)[1]
        assert any(pkg in d for d in extras.get(name, [])), f"pyproject.toml: no extra {name!r} installs {pkg}"
        assert f'heartnb[{name}]' in readme, f"README: how to install {pkg} is not said"

def api_names(name) -> list:
    "The public functions and classes of the module the notebook `name` exports (its `default_exp`), [] if none."
    src = '\n'.join(''.join(c['source']) for c in nb_json(name)['cells'] if c['cell_type'] == 'code')
    m = re.search(r'^#\|\s*default_exp\s+(\S+)', src, re.M)
    if not m: return []
    mod = importlib.import_module(f'heartnb.{m[1]}')
    return [k for k in mod.__all__ if (inspect.isfunction(o := getattr(mod, k)) or inspect.isclass(o))
            and o.__module__ == mod.__name__]

def page(site, name) -> Path: return site/'html'/docs.site_pages(site/'src'/'_proc')[name]

def test_every_notebook_is_processed(site):
    proc = site/'src'/'_proc'
    test = sorted(f.name for f in proc.glob('*.ipynb'))
    assert test == sorted(f.name for f in (ROOT/'nbs').glob('*.ipynb'))
    sidebar = (site/'src'/'nbs'/'sidebar.yml').read_text()
    assert all(n in sidebar for n in test)

def test_docs_links_name_pages_of_the_site(site):
    links = docs.check_doc_links(site/'src'/'_proc')                   # raises for a link to a page the site lacks
    assert links[ROOT/'heartnb'/'spectrogram.py'] == ['https://heartnb.github.io/heartnb/spectrogram.html.md']
    assert docs.site_pages(site/'src'/'_proc')['08a_audio_core'] == 'audio_core.html'   # nbdev strips `08a_`

@pytest.mark.parametrize('name', PAGES)
def test_page_has_the_api_and_figures(site, name):
    html = page(site, name).read_text(encoding='utf-8')
    names = api_names(name)
    if name == 'index': assert '<h1' in html and 'heartnb' in html and '<table' in html    # the README: no API
    else: assert names, f"{name} exports no functions or classes"
    for n in names:                                                      # show_doc: a heading and the signature per name
        assert re.search(rf'<h3[^>]*>\s*{re.escape(n)}\b', html), f"{name}: no show_doc heading for {n}"
        assert re.search(rf'<span class="k">(def|class)</span>(<span class="w"> </span>)?<span class="n[fc]">{re.escape(n)}</span>', html), n
    if names: assert '<span class="c1">#' in html                      # docments: parameters documented in the signature
    n_img = saved_images(name)                                           # figures only where the notebook has saved them
    n_tags = len(re.findall(r'<img [^>]*src="data:image/', html))
    if n_img: assert n_tags >= n_img, f"{name}: {n_img} saved figures, {n_tags} <img> tags"

@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (chromium, chromium-browser or google-chrome) to take screenshots with")
@pytest.mark.parametrize('name', PAGES)
def test_page_screenshot_is_not_blank(site, name, tmp_path):
    png = site/f'{name}.png'
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                        f'--user-data-dir={tmp_path/"chromium"}', f'--screenshot={png}', '--window-size=1280,2000',
                        page(site, name).as_uri()], capture_output=True, text=True, timeout=180)
    assert png.exists(), f"no screenshot: {r.stderr[-2000:]}"
    img = Image.open(png).convert('RGB')
    assert img.size == (1280, 2000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 100, f"{name}: {len(colours)} colours, a blank page?"
    white = sum(n for n,c in colours if min(c) >= 250)
    assert white < 0.98 * img.width * img.height, f"{name}: {white/(img.width*img.height):.1%} white"
