"""Shared by test_cli and test_faults: one uninterrupted `groupsae reproduce --preset tiny` in a temporary root."""
import json, os, subprocess, sys, time
from pathlib import Path
from types import SimpleNamespace
import pytest

EXE = str(Path(sys.executable).parent / "groupsae")
# one thread, unbuffered output (the fault test reads the stage lines as they come), no hub access
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
       "HF_HUB_OFFLINE": "1"}
ENV.pop("GROUPSAE_DEBUG", None)

def groupsae(*args, root=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    "Run the console script on the tiny preset (`--out root` when given)."
    out = ["--preset", "tiny"] + (["--out", str(root)] if root is not None else [])
    return subprocess.run([EXE, *args, *out], capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=timeout)

@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    "root, wall seconds and stdout of one uninterrupted `groupsae reproduce --preset tiny` (treat as read-only)."
    root = tmp_path_factory.mktemp("tiny_study")
    t0 = time.monotonic()
    p = groupsae("reproduce", root=root)
    assert p.returncode == 0, p.stderr[-3000:]
    seconds = time.monotonic() - t0
    stages = json.loads((root / "results" / "tiny" / "timings.json").read_text())["stages"]
    print(f"\nreference run: groupsae reproduce --preset tiny in {seconds:.1f} s; stages {stages}")
    return SimpleNamespace(root=root, seconds=seconds, stdout=p.stdout, stages=stages)
