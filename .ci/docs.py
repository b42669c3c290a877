#!/usr/bin/env python
"""Build heartnb's docs as far as this machine can without Quarto, and fail loudly on any error.

    python .ci/docs.py OUT [PAGE ...]      # PAGE: a notebook stem (01_spectrogram) or `all`; default: a few pages

1. nbdev's processing of the notebooks, what `nbdev-proc-nbs` does minus its Quarto download (`_ensure_quarto`):
   `refresh_quarto_yml`, `_build_modidx`, `nbdev_sidebar`, `proc_nbs`. It runs on a copy of the project in OUT/src,
   so the working tree is not touched (nbdev writes `nbs/sidebar.yml` and `_proc/` beside `pyproject.toml`); the
   processed notebooks land in OUT/src/_proc. Processing executes each notebook's import cells, exported cells and
   `show_doc`s (that is where the API tables come from); an error there, or nbdev's warning about a cell that mixes
   imports with other code (such a cell is executed too, out of context), fails the build.
2. Checks: `nbs/nbdev.yml` is what nbdev generates from `pyproject.toml`, and every `Docs:` link in a module docstring
   (`nbpath2docurl`: site-url + page + `.md`) names a page the build produces (`output-file` of a processed notebook).
3. HTML pages of some processed notebooks with nbconvert, in OUT/html, named as the site names them
   (`01_spectrogram.ipynb` -> `spectrogram.html`). Quarto's `#|` directives are honoured where it matters for reading:
   hidden cells are gone already, `echo: false` hides the input (the `show_doc` calls), the title comes from the
   frontmatter.

`tests/test_docs.py` runs this and screenshots the pages with headless Chromium; on GitHub, `.github/workflows/deploy.yaml`
renders the real site with Quarto.
"""
import os, re, sys, json, shutil, warnings, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ['index', '01_spectrogram', '05_predict']   # the pages rendered to HTML by default

def _copy_project(dest:Path):
    "Copy what nbdev's processing reads (config, notebooks, library) to `dest`."
    if dest.exists(): shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(ROOT/'pyproject.toml', dest)
    skip = shutil.ignore_patterns('_proc', '_docs', '.ipynb_checkpoints', '__pycache__', 'sidebar.yml')
    for d in ('nbs', 'heartnb'): shutil.copytree(ROOT/d, dest/d, ignore=skip)
    return dest

def proc_docs(out) -> Path:
    "nbdev's docs processing (`nbdev-proc-nbs` without Quarto) of a copy of the project in `out/src`; returns `_proc`."
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.serve import proc_nbs
    import nbdev.doclinks
    src = _copy_project(Path(out).resolve()/'src')
    cwd = Path.cwd()
    os.chdir(src)                       # nbdev finds its config (and writes `_proc`) from the working directory
    try:
        refresh_quarto_yml()
        if (src/'nbs'/'nbdev.yml').read_text() != (ROOT/'nbs'/'nbdev.yml').read_text():
            raise RuntimeError("nbs/nbdev.yml differs from what nbdev generates from pyproject.toml (nbdev's `refresh_quarto_yml`)")
        nbdev.doclinks._build_modidx()
        nbdev_sidebar.__wrapped__()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            cache = proc_nbs(n_workers=0, force=True)    # in this process, one notebook after another: errors raise here
        ours = [w for w in caught if re.search(r'[/\\](nbdev[/\\]|docments)', w.filename)]   # nbdev's, and show_doc's (fastcore.docments)
        if ours: raise RuntimeError('nbdev warned while processing the notebooks:\n' + '\n'.join(str(w.message) for w in ours))
    finally: os.chdir(cwd)
    nbs = sorted(f.name for f in (src/'nbs').glob('*.ipynb'))
    done = sorted(f.name for f in cache.glob('*.ipynb'))
    if done != nbs: raise RuntimeError(f"processing skipped notebooks: {sorted(set(nbs)-set(done))} (a folder named `.*` or `_proc` in {src}?)")
    return cache

def _read_nb(f:Path):
    "A processed notebook, as is: nbdev leaves marks in it that nbformat's validation would complain about."
    import nbformat
    return nbformat.from_dict(json.loads(Path(f).read_text(encoding='utf-8')))

def _frontmatter(nb) -> dict:
    "The YAML frontmatter nbdev's processing put in the first (raw) cell."
    import yaml
    c = nb.cells[0] if nb.cells else None
    src = ''.join(c.source) if c else ''
    if c is None or c.cell_type != 'raw' or not src.startswith('---'): return {}
    return yaml.safe_load(src.strip().strip('-')) or {}

def site_pages(proc:Path) -> dict:
    "Map each processed notebook to the page the site gives it (`output-file`; Quarto writes `.html` and `.html.md`)."
    res = {}
    for f in sorted(proc.glob('*.ipynb')):
        fm = _frontmatter(_read_nb(f))
        res[f.stem] = fm.get('output-file') or f.with_suffix('.html').name
    return res

def check_doc_links(proc:Path):
    "Every `Docs:` link in heartnb's module docstrings names a page of the site at nbdev.yml's `site-url`."
    import yaml
    site = yaml.safe_load((ROOT/'nbs'/'nbdev.yml').read_text())['website']['site-url'].rstrip('/')
    pages = {p for o in site_pages(proc).values() for p in (o, o+'.md')}
    links = {f: re.findall(r'^Docs: (\S+?)(?:"""|\'\'\')?\s*$', f.read_text(), re.M) for f in sorted((ROOT/'heartnb').rglob('*.py'))}
    bad = [f"{f.relative_to(ROOT)}: {u}" for f,us in links.items() for u in us
           if not u.startswith(site+'/') or u[len(site)+1:] not in pages]
    if bad: raise RuntimeError("Docs links to pages the site does not have:\n" + '\n'.join(bad))
    if not any(links.values()): raise RuntimeError("no `Docs:` links found in heartnb/")
    return links

_re_dir = re.compile(r'^\s*#\|\s*(.*)$')

def _html_nb(nb):
    "What Quarto would show of a processed notebook: title from the frontmatter, no `#|` lines, no `echo: false` inputs."
    import nbformat
    fm = _frontmatter(nb)
    if fm: nb.cells = nb.cells[1:]
    head = '\n\n'.join(s for s in (f"# {fm['title']}" if fm.get('title') else '', f"> {fm['description']}" if fm.get('description') else '') if s)
    if head: nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
    for c in nb.cells:
        for k in set(c) - {'cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count', 'attachments'}: del c[k]   # nbdev's own marks
        c.metadata.pop('execution', None)                         # execnb's timings (floats, where nbformat wants strings)
        c.source = ''.join(c.source)
        if c.cell_type != 'code': continue
        for o in c.get('outputs', []):                            # pandoc's link attributes, `[source](url){target="_blank"}`
            md = o.get('data', {}).get('text/markdown')
            if md: o['data']['text/markdown'] = re.sub(r'\]\(([^)]*)\)\{[^}]*\}', r'](\1)', ''.join(md))
        lines = c.source.splitlines()
        dirs = [m.group(1).replace(' ', '') for l in lines if (m := _re_dir.match(l))]
        c.source = '\n'.join(l for l in lines if not _re_dir.match(l))
        if 'echo:false' in dirs: c.metadata.setdefault('tags', []).append('remove_input')
    return nb

def html_pages(proc:Path, out:Path, names=PAGES) -> list:
    "Render the processed notebooks `names` (stems) to `out/<page>.html` with nbconvert; return the paths."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.remove_input_tags = ('remove_input',)
    c.TagRemovePreprocessor.enabled = True
    exp = HTMLExporter(config=c, exclude_input_prompt=True, exclude_output_prompt=True)
    pages, res = site_pages(proc), []
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        nb = _html_nb(_read_nb(proc/f'{n}.ipynb'))
        body,_ = exp.from_notebook_node(nb)
        f = out/pages[n]
        f.write_text(body, encoding='utf-8')
        res.append(f)
    return res

def build(out, names=PAGES):
    "Process, check the links, render `names`; print what was done and how long it took."
    out = Path(out).resolve()
    t = time.time()
    proc = proc_docs(out)
    print(f"processed {len(list(proc.glob('*.ipynb')))} notebooks into {proc} ({time.time()-t:.0f} s)")
    links = check_doc_links(proc)
    print(f"{sum(map(len, links.values()))} Docs links in heartnb/ name pages of the site")
    if names == ['all']: names = list(site_pages(proc))
    for f in html_pages(proc, out/'html', names): print(f"wrote {f}")
    return proc

if __name__ == '__main__':
    if len(sys.argv) < 2: sys.exit(__doc__)
    build(sys.argv[1], sys.argv[2:] or PAGES)
