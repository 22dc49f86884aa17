"""Execute the notebooks in nbs/ in place and store their outputs, deterministically (`make nbs`).

Each notebook runs in a fresh interpreter of this environment, from nbs/, in execnb's `CaptureShell` (what
`nbdev_test` runs them in). Cells carrying a flag of settings.ini's `tst_flags` (notest slow cuda net) and the
`nbdev_export()` cell are skipped, as `nbdev_test` skips them; their stored outputs are cleared. A second run
gives byte-identical files: progress bars are switched off, figures are PNG at the package's figure DPI
without the Software metadata (line plots as 256-colour palette PNGs, a third of the bytes, where every colour
but antialiased edges is kept; heatmaps and colour bars lossless), a figure that is a cell's value is stored
once (the inline backend would also flush it), the repository's own path is written relative
(`/.../repo/results/x` becomes `results/x`), and the notebook is cleaned with nbdev's own `clean_nb` and written
with its `write_nb`, so that `nbdev_clean` leaves it unchanged.

    python tools/execute_nbs.py                          # every notebook, two at a time
    python tools/execute_nbs.py nbs/04_distances.ipynb   # some notebooks
    python tools/execute_nbs.py --check                  # execute without writing; exit 1 if a stored one differs

A notebook whose cell raises is left as it was and named at the end (exit status 1).
"""
import argparse, json, os, re, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"

# Run in the shell before the notebook's cells; nothing of it is stored.
SETUP = """
import tqdm.std as _tqdm_std
_tqdm_init = _tqdm_std.tqdm.__init__
def _tqdm_quiet(self, *args, **kwargs):
    kwargs["disable"] = True   # progress bars write timings to stderr: never stored
    _tqdm_init(self, *args, **kwargs)
_tqdm_std.tqdm.__init__ = _tqdm_quiet
from matplotlib_inline.backend_inline import set_matplotlib_formats as _set_formats
_set_formats("png", metadata={"Software": None})
del _tqdm_std, _tqdm_quiet, _set_formats
"""

def skip_flags() -> set:
    "The flags of settings.ini's `tst_flags`, whose cells nbdev_test skips."
    from nbdev.config import get_config
    return set(get_config(path=ROOT).get("tst_flags", "").split())

def directives(source:str) -> set:
    "Names of the `#| name` directives at the top of a cell."
    from execnb.nbio import NbCell
    from nbdev.process import extract_directives
    return set(extract_directives(NbCell(0, {"cell_type": "code", "source": source}), remove=False))

def skipped(source:str, flags:set) -> bool:
    "Whether nbdev_test skips this code cell: a test flag, `#| eval: false`, or the nbdev_export() call."
    if "nbdev_export" + "(" in source: return True
    d = directives(source)
    return bool(flags & d) or re.search(r"^#\|\s*eval:\s*false", source, re.M | re.I) is not None

_ROOT_RE = re.compile(re.escape(str(ROOT)) + r"/?")

def machine_free(text:str) -> str:
    "Text with this checkout's absolute path written relative to the repository root."
    return _ROOT_RE.sub("", text)

def _clean_text(x):
    return [machine_free(s) for s in x] if isinstance(x, list) else machine_free(x) if isinstance(x, str) else x

def compact_png(b64:str, min_pixels:int=50, tol:int=2) -> str:
    """An opaque PNG (base64) as a 256-colour palette PNG when that is smaller and keeps every colour that covers at
    least `min_pixels` pixels (areas, lines, colour-bar steps) within `tol`/255: only antialiased edges may change.
    Line plots pass (a third of the bytes); heatmaps and colour bars, whose gradients would band, stay lossless."""
    import base64, io
    import numpy as np
    from PIL import Image
    raw = base64.b64decode(b64)
    im = Image.open(io.BytesIO(raw))
    if im.mode not in ("RGB", "RGBA") or (im.mode == "RGBA" and im.getextrema()[3] != (255, 255)): return b64
    rgb = im.convert("RGB")
    pal = rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO(); pal.save(buf, "PNG", optimize=True)
    if buf.tell() >= len(raw): return b64
    px = np.asarray(rgb, dtype=np.int16).reshape(-1, 3)
    _, inverse, counts = np.unique(px, axis=0, return_inverse=True, return_counts=True)
    err = np.abs(np.asarray(pal.convert("RGB"), dtype=np.int16).reshape(-1, 3) - px).max(-1)
    common = counts[inverse.ravel()] >= min_pixels
    return base64.b64encode(buf.getvalue()).decode() if err[common].max(initial=0) <= tol else b64

def stored(out:dict) -> dict:
    "One output as it is stored: text made machine-free, PNGs compacted."
    out = dict(out)
    if "text" in out: out["text"] = _clean_text(out["text"])
    if "data" in out:
        out["data"] = {k: _clean_text(v) if k.startswith("text/") else compact_png("".join(v)) if k == "image/png" else v
                       for k, v in out["data"].items()}
    return out

def drop_repeated_figures(outs:list) -> list:
    "Outputs without a displayed image that the cell's value shows again (a figure returned as the value is also flushed)."
    result = next((o for o in outs if o["output_type"] == "execute_result"), None)
    img = lambda o: {k: v for k, v in o.get("data", {}).items() if k.startswith("image/")}
    if result is None or not img(result): return outs
    return [o for o in outs if not (o["output_type"] == "display_data" and img(o) == img(result))]

def execute_one(src:Path, dest:Path) -> None:
    "Execute notebook `src` in this process and write it, executed and cleaned, to `dest`; exit 1 on an error."
    from execnb.nbio import write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.clean import _nbdev_clean
    nb = json.loads(src.read_text(encoding="utf-8"))
    flags = skip_flags()
    shell = CaptureShell(src.resolve(), mpl_format="png")
    shell.run(SETUP)
    if shell.exc: raise shell.exc
    with working_directory(src.resolve().parent):
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code": continue
            source = "".join(cell["source"])
            cell["outputs"], cell["execution_count"] = [], None
            if skipped(source, flags): continue
            outs = shell.run(source)
            if shell.exc is not None:
                shell._cell_idx = i
                sys.stderr.write(shell.prettytb(fname=src) + "\n")
                sys.exit(1)
            cell["outputs"] = [stored(o) for o in drop_repeated_figures(outs)]
    _nbdev_clean(nb, path=None)
    write_nb(nb, dest)

def run_child(nb:Path, dest:Path, timeout:int) -> tuple:
    "Execute `nb` into `dest` in a fresh interpreter; (ok, seconds, error text)."
    env = dict(os.environ, PYTHONHASHSEED="0", TQDM_DISABLE="1", MPLBACKEND="agg")
    t = time.time()
    try:
        p = subprocess.run([sys.executable, __file__, "--one", str(nb), "--dest", str(dest)], cwd=NBS, env=env,
                           capture_output=True, text=True, timeout=timeout)
        ok, err = p.returncode == 0, p.stderr
    except subprocess.TimeoutExpired: ok, err = False, f"timed out after {timeout} s"
    return ok, time.time() - t, err

def changed_cells(old:bytes, new:bytes) -> list:
    "Indices of the cells whose stored form differs between two versions of a notebook."
    a, b = json.loads(old)["cells"], json.loads(new)["cells"]
    return [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to execute (default: every nbs/*.ipynb)")
    ap.add_argument("--n_workers", type=int, default=2, help="notebooks executed at once")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one notebook may take")
    ap.add_argument("--check", action="store_true", help="execute into a temporary folder; exit 1 if a stored notebook differs")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one: return execute_one(Path(args.one), Path(args.dest))
    nbs = [Path(p).resolve() for p in args.notebooks] or sorted(NBS.glob("*.ipynb"))
    start = time.time()
    failed, differ = [], []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.n_workers) as pool:
        jobs = {pool.submit(run_child, nb, Path(tmp) / nb.name, args.timeout): nb for nb in nbs}
        for job in as_completed(jobs):
            nb, (ok, secs, err) = jobs[job], job.result()
            if not ok:
                failed.append(nb.name); print(f"FAILED {nb.name} ({secs:.0f} s)\n{err[-3000:]}", file=sys.stderr, flush=True); continue
            new = (Path(tmp) / nb.name).read_bytes()
            same = new == nb.read_bytes()
            if not same: differ.append(nb.name)
            if not args.check and not same: nb.write_bytes(new)
            note = "unchanged" if same else f"differs in cells {changed_cells(nb.read_bytes(), new)}" if args.check else "written"
            print(f"{nb.name:28s} {secs:6.1f} s {len(new) / 1e3:8.1f} kB {note}", flush=True)
    total = sum(p.stat().st_size for p in NBS.glob("*.ipynb"))
    print(f"{len(nbs)} notebooks in {time.time() - start:.0f} s; nbs/*.ipynb {total / 1e6:.2f} MB in all")
    if failed: sys.exit(f"cells raised in: {', '.join(failed)} (those notebooks were left as they were)")
    if args.check and differ: sys.exit(f"a fresh execution differs from the stored notebook: {', '.join(differ)} (run `make nbs`)")

if __name__ == "__main__": main()
