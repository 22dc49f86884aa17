"""One pytest item per notebook: the notebook follows CONVENTIONS.md and its exported cells are in the module.

`nbdev_test` (run first by `make test`) executes the notebooks; these items check what a run cannot see:
the module on disk holds every exported cell, the layout a reader relies on, and small stored outputs.
"""
import json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))

def cells(nb_path): return json.loads(nb_path.read_text())["cells"]
def src(cell): return "".join(cell["source"])
def directives(cell): return [l.strip() for l in src(cell).splitlines() if l.strip().startswith("#|")]

@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb_path):
    cs = cells(nb_path)
    title = src(cs[0])
    assert cs[0]["cell_type"] == "markdown" and title.startswith("# "), f"{nb_path.name}: first cell must be '# Title'"
    if nb_path.stem == "index": return
    assert re.search(r"^> \S", title, re.M), f"{nb_path.name}: title cell needs a '> one-line description'"
    exp = [d for c in cs for d in directives(c) if d.startswith("#| default_exp")]
    assert len(exp) == 1, f"{nb_path.name}: needs exactly one '#| default_exp', found {exp}"
    module = ROOT / "groupsae" / (exp[0].split()[-1].replace(".", "/") + ".py")
    assert module.exists(), f"{module} missing: run nbdev_export"
    mod_text = module.read_text()
    for c in cs:
        if c["cell_type"] == "code" and "#| export" in directives(c):
            for line in src(c).splitlines():
                line = re.sub(r"^(from|import) groupsae\.", r"\1 .", line)   # nbdev makes package imports relative
                if line.strip() and not line.strip().startswith("#|"):
                    assert line in mod_text, f"{nb_path.name}: exported line not in {module.name} (run nbdev_export): {line!r}"
    assert "nbdev_export" in src(cs[-1]) and "#| hide" in directives(cs[-1]), f"{nb_path.name}: last cell must export"
    assert nb_path.stat().st_size < 600_000, f"{nb_path.name}: stored outputs too large (figures at modest DPI, no tensor dumps)"

# Stored outputs (issue 16): notebooks are committed executed by `make nbs` (tools/execute_nbs.py). These checks
# fail on a notebook that lost its outputs (saved from a fresh kernel, cleared with nbdev_clean --clear_all, ...).
import ast, sys
sys.path.insert(0, str(ROOT / "tools"))
from execute_nbs import skipped, skip_flags, machine_free   # noqa: E402  (the runner's own rules)

FLAGS = skip_flags()
SHOWING_CALLS = {"print", "display", "show_doc", "Markdown", "HTML"}

def must_display(code:str) -> bool:
    "Whether a cell shows something whenever it runs: a top-level print/display/show_doc call, or a last expression."
    try: body = ast.parse(code).body
    except SyntaxError: return False          # IPython magics: not judged
    name = lambda e: e.func.id if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) else None
    if any(isinstance(s, ast.Expr) and name(s.value) in SHOWING_CALLS for s in body): return True
    last = body[-1] if body else None
    if not isinstance(last, ast.Expr) or code.rstrip().endswith(";"): return False
    v = last.value
    if isinstance(v, ast.Call): return name(v) in SHOWING_CALLS
    return not isinstance(v, (ast.Await, ast.Yield, ast.YieldFrom)) and not (isinstance(v, ast.Constant) and v.value is None)

def sections(cs) -> list:
    "The `## ` section heading each cell sits under ('' before the first)."
    out, cur = [], ""
    for c in cs:
        if c["cell_type"] == "markdown":
            m = re.search(r"^##\s+(.+)$", src(c), re.M)
            if m: cur = m.group(1).strip()
        out.append(cur)
    return out

@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_outputs_stored(nb_path):
    "Executed as `make nbs` leaves it: shown values stored, the embedded-default section shown, flagged cells empty."
    cs, missing = cells(nb_path), []
    for i, (c, sec) in enumerate(zip(cs, sections(cs))):
        if c["cell_type"] != "code": continue
        code, outs = src(c), c.get("outputs", [])
        where = f"{nb_path.name} cell {i} ({code.strip().splitlines()[0][:60] if code.strip() else 'empty'!r})"
        assert not [o for o in outs if o["output_type"] == "error"], f"{where}: stores an error"
        if skipped(code, FLAGS):
            assert not outs, f"{where}: a flagged cell stores outputs (make nbs runs unflagged cells only)"
            continue
        if not outs and (must_display(code) or sec == "On the embedded default"): missing.append(where)
    assert not missing, ("cells that show something have no stored outputs; run `make nbs` (tools/execute_nbs.py) "
                         "and commit the notebooks:\n" + "\n".join(missing))
    assert any(c.get("outputs") for c in cs if c["cell_type"] == "code"), f"{nb_path.name}: no stored outputs at all (make nbs)"
    text = nb_path.read_text(encoding="utf-8")
    assert machine_free(text) == text, f"{nb_path.name}: stored outputs hold this checkout's path {ROOT} (run make nbs)"
    outs = json.dumps([c.get("outputs", []) for c in cs])
    assert "site-packages/" not in outs, f"{nb_path.name}: stored outputs name an installation's files (a warning from another machine?): run make nbs"

def test_embedded_default_sections_have_outputs():
    "Every '## On the embedded default' section exists where the study's results are, and shows them."
    with_section = [p.stem for p in NOTEBOOKS if "On the embedded default" in sections(cells(p))]
    for stem in ("04_distances", "05_grouping", "05a_flops", "07_train", "08b_eval_figures", "10_similarity"):
        assert stem in with_section, f"{stem}.ipynb has no '## On the embedded default' section"
    for stem in with_section:
        cs = cells(ROOT / "nbs" / f"{stem}.ipynb")
        code = [c for c, s in zip(cs, sections(cs)) if s == "On the embedded default" and c["cell_type"] == "code"
                and not skipped(src(c), FLAGS)]
        assert code and all(c.get("outputs") for c in code), f"{stem}.ipynb: the embedded-default section has no outputs (make nbs)"

def test_notebooks_total_size():
    total = sum(p.stat().st_size for p in NOTEBOOKS)
    assert total < 15_000_000, f"nbs/*.ipynb hold {total / 1e6:.1f} MB: keep stored outputs small (figures at modest DPI)"
