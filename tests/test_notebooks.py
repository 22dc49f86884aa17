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
    assert nb_path.stat().st_size < 400_000, f"{nb_path.name}: stored outputs too large"
