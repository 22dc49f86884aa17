"""Generate README.md from nbs/index.ipynb (Quarto, which nbdev_readme needs, cannot be installed here).

The notebook is first executed in place through a Jupyter kernel (so its tables show the current
results/), then cleaned with nbdev_clean. Markdown cells are copied, code cells become fenced Python blocks
followed by their output (Markdown outputs verbatim); cells marked `#| hide` are left out. Links written
relative to nbs/ (`../figures/...`, so they work in JupyterLab) are made relative to the repository root.
`--check` exits 1 when README.md is not current, without executing anything.
"""
import argparse, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def cell_source(cell): return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]

def text_output(cell):
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream": parts.append("".join(out["text"]))
        elif "data" in out and "text/markdown" in out["data"]: return "md", "".join(out["data"]["text/markdown"])
        elif "data" in out and "text/plain" in out["data"] and "image/png" not in out["data"]:
            parts.append("".join(out["data"]["text/plain"]))
    return "text", "\n".join(p.rstrip("\n") for p in parts)

def render(nb) -> str:
    blocks = ["<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->"]
    for cell in nb["cells"]:
        src = cell_source(cell).strip("\n")
        if cell["cell_type"] == "markdown": blocks.append(src.replace("](../", "]("))   # links are relative to nbs/ in the notebook
        elif cell["cell_type"] == "code":
            lines = src.splitlines()
            if any(l.strip().startswith("#|") and "hide" in l for l in lines): continue
            code = "\n".join(l for l in lines if not l.strip().startswith("#|")).strip("\n")
            if code: blocks.append(f"```python\n{code}\n```")
            kind, out = text_output(cell)
            if out.strip(): blocks.append(out if kind == "md" else f"```\n{out}\n```")
    return "\n\n".join(blocks).rstrip() + "\n"

def execute(nb_path: Path):
    "Run the notebook in a Jupyter kernel from nbs/, store its outputs, and clean it as nbdev_clean does."
    import nbformat, subprocess
    from nbclient import NotebookClient
    nb = nbformat.read(nb_path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    nbformat.write(nb, nb_path)
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(nb_path)], check=True, cwd=ROOT)

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is stale instead of writing it")
    args = ap.parse_args()
    nb_path = ROOT / "nbs" / "index.ipynb"
    if not args.check: execute(nb_path)
    text = render(json.loads(nb_path.read_text()))
    readme = ROOT / "README.md"
    if args.check:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("README.md is stale: run `python tools/make_readme.py` and commit it")
        return
    readme.write_text(text)

if __name__ == "__main__": main()
