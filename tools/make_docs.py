"""Build the documentation site from the executed notebooks into _docs/ (`make docs`), without Quarto.

Each notebook in nbs/ becomes one HTML page through nbconvert (its stored outputs, figures embedded as data
URIs; nothing is executed: run `make nbs` first), with a sidebar listing the notebooks in order by the titles of
their '# Title' cells; index.ipynb becomes index.html. As nbdev's own site shows them: `#| hide` and
`#| default_exp` cells are left out, `#| ...` directive lines are dropped from the code shown, and `show_doc`
cells show their output only. Links to notebooks (`[05_grouping](05_grouping.ipynb#section)`) point at the
pages; images that Markdown cells take from the repository (`../figures/...`) are copied into the site, so
_docs/ is complete on its own. _docs/ is nbdev's doc_path (settings.ini) and git-ignored: the site is built,
not committed.

    python tools/make_docs.py                # nbs/ -> _docs/
    python tools/make_docs.py --nbs DIR --out DIR
"""
import argparse, html, json, re, shutil, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute_nbs import directives   # noqa: E402  (the same `#|` parsing as the notebook runner)

CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; }
nav.sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 17rem; overflow-y: auto; padding: 1rem;
  background: #f6f7f9; border-right: 1px solid #e1e4e8; }
nav.sidebar .project { display: block; font-weight: 700; font-size: 1.15rem; margin-bottom: .8rem; color: inherit; text-decoration: none; }
nav.sidebar ol { list-style: none; margin: 0; padding: 0; }
nav.sidebar li a { display: block; padding: .22rem .45rem; border-radius: 4px; color: #24292f; text-decoration: none; font-size: .92rem; }
nav.sidebar li a .stem { display: block; color: #6e7781; font-size: .74rem; font-family: ui-monospace, monospace; }
nav.sidebar li a:hover { background: #e7eaee; }
nav.sidebar li a.current { background: #dbe7f7; font-weight: 600; }
main { margin-left: 17rem; padding: 1.2rem 2.2rem 4rem; max-width: 66rem; }
main h1 { margin-top: .3rem; } main blockquote { margin: 0 0 1rem; color: #57606a; font-size: 1.05rem; border: 0; padding: 0; }
a.anchor-link { visibility: hidden; margin-left: .3rem; text-decoration: none; color: #8c959f; }
h1:hover a.anchor-link, h2:hover a.anchor-link, h3:hover a.anchor-link { visibility: visible; }
.cell { margin: .6rem 0; }
.input_area, div.highlight { background: #f6f8fa; border-radius: 6px; }
.input_area pre, .output_area pre { margin: 0; padding: .6rem .8rem; overflow-x: auto; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
.output_area pre { background: #fff; border-left: 3px solid #d0d7de; }
.output_stderr pre { background: #fff8f5; }
.output_area img { max-width: 100%; height: auto; }
.rendered_html img { max-width: 100%; }
.rendered_html table, .output_markdown table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
.rendered_html th, .rendered_html td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left; }
.rendered_html hr { border: 0; border-top: 1px solid #d0d7de; }
.prompt { display: none; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {project}</title>
<link rel="stylesheet" href="style.css">
</head>
<body>
<nav class="sidebar"><a class="project" href="index.html">{project}</a>
<ol>
{items}
</ol></nav>
<main>
{body}
</main>
</body>
</html>
"""

def cell_source(cell) -> str: return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]

def title_of(nb:dict, fallback:str) -> str:
    "The text of the first '# Title' line of the notebook's first Markdown cell."
    first = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    m = re.search(r"^#\s+(.+)$", cell_source(first), re.M) if first else None
    return m.group(1).strip() if m else fallback

_DIRECTIVE = re.compile(r"^\s*#\|.*(\n|$)", re.M)
_SHOW_DOC = re.compile(r"^\s*(show_doc\([^\n]*\)\s*)+$")
_QUARTO_ATTRS = re.compile(r"(\]\([^)\s]+\))\{[^}\n]*\}")       # show_doc's `[source](url){target="_blank" ...}`

def for_site(nb:dict, git_prefix:str) -> dict:
    "The notebook as the site shows it: hidden cells dropped, directives stripped, show_doc cells output only."
    cells = []
    for c in nb["cells"]:
        if c["cell_type"] != "code": cells.append(c); continue
        src = cell_source(c); d = directives(src)
        if "hide" in d or "default_exp" in d: continue
        c = dict(c, source=_DIRECTIVE.sub("", src).strip("\n"), metadata=dict(c.get("metadata", {})))
        tags = []
        if _SHOW_DOC.match(c["source"]) or re.search(r"^#\|\s*echo:\s*false", src, re.M): tags.append("remove_input")
        if re.search(r"^#\|\s*output:\s*false", src, re.M): tags.append("remove_output")
        c["metadata"]["tags"] = tags
        outs = []
        for o in c.get("outputs", []):
            o = json.loads(json.dumps(o))
            if "text/markdown" in o.get("data", {}):
                md = "".join(o["data"]["text/markdown"])
                md = _QUARTO_ATTRS.sub(r"\1", md)
                if git_prefix: md = re.sub(re.escape(git_prefix) + r"([^)#\s]+)(#L\w+)?", r"../\1", md)   # source links: the local module
                o["data"]["text/markdown"] = md
            outs.append(o)
        c["outputs"] = outs
        if c["source"] or outs: cells.append(c)
    return dict(nb, cells=cells)

_EXPORTER = []

def render_body(nb:dict) -> str:
    "The notebook's cells as HTML (nbconvert's basic template, prompts off)."
    import nbformat
    if not _EXPORTER: _EXPORTER.append(_exporter())
    body, _ = _EXPORTER[0].from_notebook_node(nbformat.reads(json.dumps(nb), as_version=4))
    return body

def _exporter():
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    cfg = Config()
    cfg.TagRemovePreprocessor.enabled = True
    cfg.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    cfg.TagRemovePreprocessor.remove_all_outputs_tags = {"remove_output"}
    cfg.HTMLExporter.exclude_input_prompt = cfg.HTMLExporter.exclude_output_prompt = True
    # our own notebooks: the highlighted input needs no bleach pass (a third of the build time)
    return HTMLExporter(config=cfg, template_name="basic", filters={"clean_html": lambda html_text: html_text})

def fix_links(body:str, src_dir:Path, out:Path) -> str:
    "Notebook links point at their pages; local images are copied into the site."
    body = re.sub(r'href="([^":/#?]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
    def copy_img(m):
        rel = m.group(2)
        if re.match(r"[a-z]+:", rel) or rel.startswith("/"): return m.group(0)
        f = (src_dir / html.unescape(rel)).resolve()
        try: dest_rel = f.relative_to(src_dir.resolve().parent)   # the project folder that holds nbs/
        except ValueError: return m.group(0)
        if not f.is_file(): return m.group(0)
        dest = out / dest_rel
        dest.parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(f, dest)
        return f'{m.group(1)}"{dest_rel.as_posix()}"'
    return re.sub(r'(<img[^>]*?\bsrc=)"([^"]+)"', copy_img, body)

def sidebar_item(fname:str, title:str, stem:str, current:bool) -> str:
    cls = ' class="current"' if current else ""
    stem_html = "" if stem == "index" else f'<span class="stem">{html.escape(stem)}</span>'
    return f'<li><a href="{fname}"{cls}>{html.escape(title)}{stem_html}</a></li>'

def build(nbs_dir:Path, out:Path, jobs:int=2) -> list:
    "Write the site; the list of (page file, title) in sidebar order."
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    git_prefix = f"{cfg.git_url.rstrip('/')}/blob/{cfg.branch}/" if cfg.get("git_url") else ""
    project = cfg.get("lib_name", "docs")
    paths = sorted(nbs_dir.glob("*.ipynb"), key=lambda p: (p.stem != "index", p.stem))
    nbs = {p: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    pages = [(f"{p.stem}.html", title_of(nb, p.stem), p.stem) for p, nb in nbs.items()]
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "style.css").write_text(CSS.lstrip())
    from pygments.formatters import HtmlFormatter
    with open(out / "style.css", "a") as f: f.write(HtmlFormatter(style="default").get_style_defs(".highlight"))
    shown = [for_site(nb, git_prefix) for nb in nbs.values()]
    if jobs > 1 and len(shown) > 1:
        with ProcessPoolExecutor(jobs) as pool: bodies = list(pool.map(render_body, shown))   # highlighting is the cost
    else: bodies = [render_body(nb) for nb in shown]
    for p, (fname, title, stem), body in zip(nbs, pages, bodies):
        items = "\n".join(sidebar_item(f, t, s, f == fname) for f, t, s in pages)
        body = fix_links(body, p.parent, out)
        (out / fname).write_text(PAGE.format(title=html.escape(title), project=html.escape(project), items=items, body=body),
                                 encoding="utf-8")
    return [(f, t) for f, t, _ in pages]

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nbs", default=str(ROOT / "nbs"), help="folder of notebooks")
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="site folder (replaced)")
    ap.add_argument("--jobs", type=int, default=2, help="pages rendered at once")
    args = ap.parse_args()
    out = Path(args.out)
    pages = build(Path(args.nbs), out, args.jobs)
    print(f"{len(pages)} pages in {out}; open {out / 'index.html'}")

if __name__ == "__main__": main()
