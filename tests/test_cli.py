"""End-to-end runs of the `groupsae` console script on the tiny preset, in a temporary output root."""
import json, subprocess, sys
from pathlib import Path

EXE = str(Path(sys.executable).parent / "groupsae")

def run(*args, root):
    p = subprocess.run([EXE, *args, "--preset", "tiny", "--out", str(root)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout

def test_stages_end_to_end_then_skip(tmp_path):
    for stage in ("activations", "distances", "group", "train", "evaluate", "figures"):
        run(stage, root=tmp_path)
    res = tmp_path / "results" / "tiny"
    summary = json.loads((res / "summary.json").read_text())
    for key in ("n_layers", "G_hat", "amad_G_hat", "baseline_fvu", "baseline_delta_ce", "ghat_fvu", "ghat_delta_ce",
                "compute_saving_paper", "compute_saving_fair"):
        assert key in summary, key
    groups = json.loads((res / "groups.json").read_text())
    assert groups["G_hat"] == summary["G_hat"]
    assert (tmp_path / "figures" / "tiny" / "fig2_amad.png").exists()
    # a second run of a finished stage is skipped; --force redoes it
    assert "up to date, skipped" in run("group", root=tmp_path)
    assert "skipped" not in run("group", "--force", root=tmp_path)

def test_bad_preset_and_override_fail_cleanly(tmp_path):
    p = subprocess.run([EXE, "train", "--set", "sae.k=0", "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "sae.k" in p.stderr
