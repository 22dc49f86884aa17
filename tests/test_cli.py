"""End-to-end runs of the `groupsae` console script on the tiny preset, in temporary output roots: the whole study,
skipping and forcing, one-line errors with their exit codes, and the lock on the output folder."""
import errno, json, math, os, re, shutil, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
from conftest import EXE, ENV, groupsae

from groupsae.cli import STAGE_NAMES as STAGES   # the stages `reproduce` runs

def copy_study(tiny_study, dst:Path) -> Path:
    "A private copy of the reference study, for tests that change files."
    shutil.copytree(tiny_study.root, dst, symlinks=True)
    return dst

BAR = re.compile(r"\d+%\|.*\| \d+/\d+ \[")   # a tqdm progress bar

def one_line(p:subprocess.CompletedProcess, code:int) -> str:
    "The single stderr line (progress bars aside) of a command that failed with exit code `code`: no traceback."
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    shown = [l.split("\r")[-1] for l in p.stderr.split("\n")]      # what a terminal shows of each line
    lines = [l for l in shown if l.strip() and not BAR.search(l)]
    assert len(lines) == 1 and lines[0].startswith("groupsae: ") and "Traceback" not in p.stderr, p.stderr[-3000:]
    return lines[0]

def test_reproduce_end_to_end_then_skip(tiny_study, tmp_path):
    res = tiny_study.root / "results" / "tiny"
    summary = json.loads((res / "summary.json").read_text())
    for key in ("n_layers", "G_hat", "amad_G_hat", "baseline_fvu", "baseline_delta_ce", "ghat_fvu", "ghat_delta_ce",
                "compute_saving_paper", "compute_saving_fair", "baseline_detection", "scorer_calibration"):
        assert key in summary, key
    assert json.loads((res / "groups.json").read_text())["G_hat"] == summary["G_hat"]
    for fig in ("fig1_distances", "fig2_amad", "fig3_quality_vs_amad", "fig5_interp_vs_amad", "fig8_mmcs"):
        assert (tiny_study.root / "figures" / "tiny" / f"{fig}.png").exists(), fig
    # the wall-clock measurements live in timings.json, not in train.json
    timings, train = json.loads((res / "timings.json").read_text()), json.loads((res / "train.json").read_text())
    assert sorted(timings["stages"]) == sorted(STAGES) and timings["train.json"]["wall_s"] > 0
    assert "wall_s" not in train and all("wall_s" not in a for a in train["saes"].values()) and train["n_steps"] == 34
    assert tiny_study.seconds < 300, f"the tiny study took {tiny_study.seconds:.0f} s: it should take about a minute"
    # a second run of a finished stage is skipped; --force redoes it, with the same bytes
    root = copy_study(tiny_study, tmp_path / "study")
    before = (root / "results" / "tiny" / "groups.json").read_bytes()
    assert "[group] up to date, skipped" in groupsae("group", root=root).stdout
    p = groupsae("group", "--force", root=root)
    assert p.returncode == 0 and "skipped" not in p.stdout, p.stderr[-2000:]
    assert (root / "results" / "tiny" / "groups.json").read_bytes() == before

def test_bad_preset_and_override_fail_cleanly(tmp_path):
    p = subprocess.run([EXE, "train", "--set", "sae.k=0", "--out", str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert "sae.k" in one_line(p, 2)
    p = subprocess.run([EXE, "train", "--preset", "nope"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and "invalid choice: 'nope'" in p.stderr     # argparse's own usage error

def test_corrupt_results_file_names_file_and_stage(tiny_study, tmp_path):
    "The issue's case: a truncated groups.json made `groupsae train` end in a 25-line JSONDecodeError traceback."
    root = copy_study(tiny_study, tmp_path / "study")
    groups = root / "results" / "tiny" / "groups.json"
    groups.write_text(groups.read_text()[:100])
    line = one_line(groupsae("train", "--force", root=root), 1)
    assert line.startswith(f"groupsae: [train] {groups} is damaged (not valid JSON: "), line
    assert line.endswith("Fix: rerun the stage that writes it, `groupsae group --force` with the same options"), line
    # --debug and GROUPSAE_DEBUG=1 show the traceback instead
    for p in (groupsae("train", "--force", "--debug", root=root), groupsae("train", "--force", root=root, env={"GROUPSAE_DEBUG": "1"})):
        assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr and "CorruptFileError" in p.stderr

def test_missing_upstream_file_names_the_stage_to_run(tmp_path):
    line = one_line(groupsae("train", root=tmp_path), 1)
    assert line == (f"groupsae: [train] {tmp_path / 'results' / 'tiny' / 'groups.json'} does not exist. Fix: run the 'group' "
                    "stage first (`groupsae group` with the same options), or `groupsae reproduce`, which runs every stage in order")

def test_offline_hub_is_one_line(tmp_path):
    line = one_line(groupsae("activations", "--set", "model.name=gpt2", root=tmp_path), 1)
    assert line.startswith("groupsae: [activations] cannot load 'gpt2': not a local directory and the Hugging Face hub is "
                           "unreachable (HF_HUB_OFFLINE is set). Fix: "), line

def test_nonfinite_values_are_one_line(tiny_study, tmp_path):
    "A NaN in distances.json stops the group stage; a NaN input scale stops training at the layer and step."
    root = copy_study(tiny_study, tmp_path / "study")
    res = root / "results" / "tiny"
    d = json.loads((res / "distances.json").read_text()); d["matrix"][0][1] = d["matrix"][1][0] = math.nan
    (res / "distances.json").write_text(json.dumps(d))
    assert one_line(groupsae("group", "--force", root=root), 1) == \
        "groupsae: [group] distance matrix holds NaN or inf. Fix: recompute the distances"
    s = json.loads((res / "scales.json").read_text()); s["scales"][1] = math.nan
    (res / "scales.json").write_text(json.dumps(s))
    line = one_line(groupsae("train", "--force", root=root), 1)
    assert line.startswith("groupsae: [train] non-finite loss in SAE ") and "input activations of layer 1 were non-finite at step 0" in line, line

def test_full_disk_names_the_file(tiny_study, tmp_path):
    "ENOSPC while writing (every fsync fails, as on a full disk): the file being written, the cause and the fix."
    root = copy_study(tiny_study, tmp_path / "study")
    code = textwrap.dedent(f"""
        import errno, os, sys
        def full(fd): raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync = full
        from groupsae.cli import main
        sys.exit(main(["group", "--force", "--preset", "tiny", "--out", {str(root)!r}]))""")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    line = one_line(p, 1)
    assert line == (f"groupsae: {root / 'results' / 'tiny' / 'config.json'}: no space left on the device. Fix: free some space "
                    "(runs/ holds the checkpoints and SAE weights) or use --out on a disk with room, then rerun the same "
                    "command to resume"), line

def test_unwritable_out_names_the_folder(tmp_path):
    "A folder the user cannot write: as root, /sys refuses new folders (EPERM); otherwise a chmod 0o500 folder."
    if os.geteuid() == 0: out = Path("/sys/groupsae-test")
    else: out = tmp_path / "ro"; out.mkdir(); out.chmod(0o500); out = out / "study"
    try: out.mkdir(); out.rmdir(); pytest.skip(f"{out} is writable here")
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES, errno.EROFS): pytest.skip(f"{out}: {e}")
    line = one_line(groupsae("distances", root=out), 1)
    assert line.startswith(f"groupsae: {out}: ") and "Fix: " in line and ("permi" in line or "read-only" in line), line

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from groupsae import train
    from groupsae.cli import main
    root, hang_at = Path(sys.argv[1]), int(sys.argv[2])
    step = train.Trainer.step
    def hanging_step(self, acts):   # a `groupsae train` that is alive mid-run, after its checkpoint of step 4
        step(self, acts)
        if self.step_idx == hang_at: (root / "hanging").write_text(str(self.step_idx)); time.sleep(600)
    train.Trainer.step = hanging_step
    sys.exit(main(["train", "--preset", "tiny", "--out", str(root)]))
""")

def test_second_process_stops_at_once_and_stale_lock_is_taken_over(tiny_study, tmp_path):
    root = tmp_path / "study"
    for f in ("scales.json", "groups.json"):   # the train stage's inputs, nothing trained yet
        (root / "results" / "tiny").mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_study.root / "results" / "tiny" / f, root / "results" / "tiny" / f)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), "6"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while not (root / "hanging").exists():
            assert holder.poll() is None, holder.stdout.read()
            assert time.monotonic() - t0 < 240, "the holder never reached step 6"
            time.sleep(0.2)
        t0 = time.monotonic()
        line = one_line(groupsae("train", root=root), 1)
        took = time.monotonic() - t0
        assert holder.poll() is None                                       # the holder was untouched
        lock = root / "runs" / "tiny"
        assert line.startswith(f"groupsae: {lock} is in use by pid {holder.pid} on {socket.gethostname()} "
                               "(`groupsae train --preset tiny --out "), line
        assert ", started 20" in line and line.endswith("Fix: wait for it to finish or stop it, or use another --out"), line
        assert took < 30, f"the second process took {took:.0f} s to stop"
    finally:
        holder.send_signal(signal.SIGKILL); holder.wait()
    # the holder died holding the lock (and a checkpoint of step 4): the next run takes over and resumes
    p = groupsae("train", root=root)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"groupsae: taking over the lock of {lock} from pid {holder.pid} on {socket.gethostname()} (`groupsae train" in p.stderr
    assert f"resuming from {lock / 'train_ckpt.pt'} at step 4 ({4 * 4 * 31:,} tokens)" in p.stdout, p.stdout[-2000:]
    assert (lock / "lock").read_text() == ""                            # released cleanly
    ref = tiny_study.root / "results" / "tiny" / "train.json"
    assert (root / "results" / "tiny" / "train.json").read_bytes() == ref.read_bytes()   # resumed = uninterrupted
    print(f"\nsecond process stopped in {took:.1f} s")
