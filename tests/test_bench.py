"""The GPU benchmark's code path, run on the CPU at toy sizes so it cannot rot where no GPU is lent."""
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_bench_gpu_smoke_on_cpu():
    cmd = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--size", "70m", "--windows", "2",
           "--ctx", "64", "--steps", "2", "--expansion", "2", "--k", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"gpu_train_tokens_per_s=(\d+) gpu_extract_tokens_per_s=(\d+) saving_measured=(-?[\d.]+) saving_model=([\d.]+)", last)
    assert m, last
    assert int(m[1]) > 0 and int(m[2]) > 0
    # 6 layers, the last keeps its own SAE, 5 grouped in pairs -> 3 + 1 SAEs: the model's saving is 1 - (A + 4T) / (A + 6T)
    assert 0 < float(m[4]) < 2 / 6
    assert "per-layer suite: 6 SAEs" in out.stdout and "G-hat     suite: 4 SAEs" in out.stdout
