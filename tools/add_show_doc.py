"""Insert the missing `show_doc(name)` cells after the `#| export` cells that define `name` (idempotent).

nbdev's way: the hide cell imports `from nbdev.showdoc import show_doc`, and each exported function and class
(and each method added with fastcore's `@patch`, as `Class.method`) gets a `show_doc` cell right after the
export cell that defines it, so its signature and docments appear where it is developed. Names starting with
`_` are private and skipped. A name already shown somewhere in the notebook is left alone, so running the
script twice changes nothing; new cells get ids derived from the notebook and the name (stable, no random
ids). Notebooks are written the way nbdev writes them (`nbdev_clean` leaves them unchanged).

    python tools/add_show_doc.py                  # every notebook in nbs/
    python tools/add_show_doc.py nbs/05_grouping.ipynb
    python tools/add_show_doc.py --check          # list what is missing; exit 1 if anything is
"""
import argparse, ast, hashlib, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORT = "from nbdev.showdoc import show_doc"
EXPORT_RE = re.compile(r"^#\|\s*exports?\s*$", re.M)   # `#| export` and `#| exports` (not `exporti`: internal)
SHOWN_RE = re.compile(r"^\s*show_doc\(\s*([\w.]+)", re.M)

def src(cell) -> str: return "".join(cell["source"])

def _patch_target(fn:ast.FunctionDef) -> str | None:
    "`Class.method` for a function decorated with fastcore's `@patch` (the class is the first argument's annotation)."
    decs = [d.func if isinstance(d, ast.Call) else d for d in fn.decorator_list]
    names = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in decs}
    if not names & {"patch", "patch_to"} or not fn.args.args: return None
    anno = fn.args.args[0].annotation
    return f"{anno.id}.{fn.name}" if isinstance(anno, ast.Name) else None

def exported_names(code:str) -> list:
    "Public functions, classes and patched methods defined at the top of an export cell, in order."
    out = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = _patch_target(node) or node.name
        elif isinstance(node, ast.ClassDef): name = node.name
        else: continue
        if not any(part.startswith("_") for part in name.split(".")): out.append(name)
    return out

def _id(nb_path:Path, what:str) -> str: return hashlib.sha1(f"{nb_path.stem}:{what}".encode()).hexdigest()[:8]

def _code_cell(source:str, cell_id:str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cell_id, "metadata": {}, "outputs": [],
            "source": source.splitlines(True)}

def add_show_doc(nb:dict, nb_path:Path) -> list:
    "Insert the missing show_doc cells (and the import) into `nb`; the names added."
    cells = nb["cells"]
    shown = {m for c in cells if c["cell_type"] == "code" for m in SHOWN_RE.findall(src(c))}
    added, i = [], 0
    while i < len(cells):
        c = cells[i]
        if c["cell_type"] == "code" and EXPORT_RE.search(src(c)):
            j = i + 1
            while j < len(cells) and cells[j]["cell_type"] == "code" and SHOWN_RE.match(src(cells[j])): j += 1
            for name in exported_names(src(c)):
                if name in shown: continue
                cells.insert(j, _code_cell(f"show_doc({name})", _id(nb_path, f"show_doc:{name}")))
                shown.add(name); added.append(name); j += 1
            i = j
        else: i += 1
    if added and not any(IMPORT in src(c) for c in cells if c["cell_type"] == "code"):
        hide = next((c for c in cells if c["cell_type"] == "code" and re.match(r"#\|\s*hide\b", src(c))
                     and "nbdev_export" not in src(c)), None)
        if hide is not None:
            hide["source"] = (src(hide).rstrip("\n") + "\n" + IMPORT).splitlines(True)
        else:   # no hide cell yet: one right after the first export cell
            first = next(k for k, c in enumerate(cells) if c["cell_type"] == "code" and EXPORT_RE.search(src(c)))
            cells.insert(first + 1, _code_cell(f"#| hide\n{IMPORT}", _id(nb_path, "show_doc:import")))
    return added

def write_nb(nb:dict, path:Path):
    "Write as nbdev's `write_nb` does (sorted keys, indent 1, UTF-8, final newline), only if the text changed."
    text = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    if path.read_text(encoding="utf-8") != text: path.write_text(text, encoding="utf-8")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks (default: every nbs/*.ipynb)")
    ap.add_argument("--check", action="store_true", help="only list the missing show_doc cells; exit 1 if any")
    args = ap.parse_args()
    missing = 0
    for path in [Path(p) for p in args.notebooks] or sorted((ROOT / "nbs").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        added = add_show_doc(nb, path)
        if not added: continue
        missing += len(added)
        print(f"{path.name}: {'missing' if args.check else 'added'} show_doc for {', '.join(added)}")
        if not args.check: write_nb(nb, path)
    if args.check and missing: sys.exit(f"{missing} exported names have no show_doc cell: run `python tools/add_show_doc.py`")

if __name__ == "__main__": main()
