"""tools/execute_nbs.py (`make nbs`) on a small notebook: outputs stored, flagged cells skipped, a second run byte-identical."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "execute_nbs.py"

def code(text, outputs=()):
    return {"cell_type": "code", "execution_count": 3, "metadata": {"scrolled": True}, "source": text, "outputs": list(outputs)}

CELLS = [
    {"cell_type": "markdown", "metadata": {}, "source": "# Demo\n> a notebook"},
    code("import matplotlib.pyplot as plt\nfrom pathlib import Path\nfrom tqdm.auto import tqdm\nx = 41"),
    code("x + 1"),
    code("for _ in tqdm(range(3), disable=False): pass\nprint('done')"),
    code("fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([0, 1], [1, 0]); fig"),
    code(f"print(Path({str(ROOT)!r}) / 'results')"),
    code("#| slow\nraise RuntimeError('a slow cell must not run')",
         [{"output_type": "stream", "name": "stdout", "text": "left over from a manual run\n"}]),
    code("#| hide\nimport nbdev; nbdev.nbdev_export()"),
]

def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args), "--n_workers", "1"], capture_output=True, text=True, cwd=ROOT)

def test_execute_in_place(tmp_path):
    nb_path = tmp_path / "demo.ipynb"
    nb_path.write_text(json.dumps({"cells": [dict(c, id=f"c{i}") for i, c in enumerate(CELLS)], "metadata": {},
                                   "nbformat": 4, "nbformat_minor": 5}))
    p = run(nb_path)
    assert p.returncode == 0, p.stderr
    first = nb_path.read_bytes()
    cells = json.loads(first)["cells"]
    outs = lambda i: cells[i]["outputs"]
    assert "".join(outs(2)[0]["data"]["text/plain"]) == "42"
    assert [o["output_type"] for o in outs(3)] == ["stream"] and "".join(outs(3)[0]["text"]) == "done\n"   # no progress bar
    assert [o["output_type"] for o in outs(4)] == ["execute_result"] and "image/png" in outs(4)[0]["data"]  # the figure once
    assert "".join(outs(5)[0]["text"]) == "results\n"                       # the checkout's path written relative
    assert outs(6) == [] and outs(7) == []                                  # flagged and export cells: not run, cleared
    assert all(c.get("execution_count") is None and c["metadata"] == {} for c in cells if c["cell_type"] == "code")
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(nb_path)], check=True, cwd=ROOT)
    assert nb_path.read_bytes() == first                                    # nbdev_clean changes nothing
    p = run(nb_path, "--check")
    assert p.returncode == 0 and "unchanged" in p.stdout, p.stdout + p.stderr   # a second run: the same bytes

def test_failing_cell_leaves_notebook(tmp_path):
    nb_path = tmp_path / "bad.ipynb"
    nb_path.write_text(json.dumps({"cells": [dict(code("1 / 0"), id="a")], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    before = nb_path.read_bytes()
    p = run(nb_path)
    assert p.returncode == 1 and "ZeroDivisionError" in p.stderr and "bad.ipynb" in p.stderr
    assert nb_path.read_bytes() == before

def test_compact_png_keeps_gradients_lossless():
    "Line plots become palette PNGs whose solid colours are exact; a colour bar's gradient is left lossless."
    import base64, io
    import matplotlib; matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    sys.path.insert(0, str(ROOT / "tools"))
    from execute_nbs import compact_png
    def png(fig):
        buf = io.BytesIO(); fig.savefig(buf, format="png", dpi=100); plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()
    fig, ax = plt.subplots(figsize=(4, 3)); ax.plot(np.sin(np.linspace(0, 6, 50)), lw=2); ax.set_title("a line")
    line = png(fig)
    out = compact_png(line)
    small, orig = (Image.open(io.BytesIO(base64.b64decode(x))) for x in (out, line))
    assert small.mode == "P" and len(out) < 0.7 * len(line)
    a, b = np.asarray(orig.convert("RGB"), dtype=int), np.asarray(small.convert("RGB"), dtype=int)
    assert np.abs(a - b).max(-1).mean() < 1 and (a == b).all(-1).mean() > 0.95   # only edge pixels move
    fig, ax = plt.subplots(figsize=(4, 3)); fig.colorbar(ax.imshow(np.linspace(0, 1, 400).reshape(20, 20)), ax=ax)
    grad = png(fig)
    assert compact_png(grad) == grad
