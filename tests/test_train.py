"""The trainer beyond what a notebook can show: a run killed with SIGKILL resumes to the same weights, two gloo
processes give the same SAEs as one, FLOPs against FlopCounterMode, non-finite stops, optional wandb."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from groupsae.config import get_preset, override, results_dir, runs_dir, save_json, load_json
from groupsae.study import SAESpec, specs_for_study, study_layout, group_name
from groupsae.train import (Trainer, NonFiniteError, sae_step_flops, auxk_flops, fit,
                            save_checkpoint, load_checkpoint, wandb_logger)
from groupsae.distributed import assign_ranks

PY = sys.executable

def tiny_cfg():
    "The tiny preset, shrunk: 1,200 training tokens in 10 batches of 4 windows."
    return override(get_preset("tiny"), **{"train.n_tokens": 1200, "data.n_train_tokens": 1280,
                                           "train.checkpoint_every": 2, "train.log_every": 3})

def write_inputs(root:Path):
    "scales.json and groups.json for tiny-neox (4 layers), as the activations and group stages would write them."
    save_json({"layers": [0, 1, 2, 3], "scales": [1.0, 0.9, 0.8, 0.7], "mode": "mean_norm"}, results_dir("tiny", root) / "scales.json")
    save_json({"layers": [0, 1, 2], "G_hat": 2, "partitions": {"1": [[0, 1, 2]], "2": [[0], [1, 2]], "3": [[0], [1], [2]]},
               "even_groups": {"2": [[0, 1], [2]]}}, results_dir("tiny", root) / "groups.json")

WORKER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from groupsae.config import RunConfig
    from groupsae import train
    torch.set_num_threads(1)
    cfg, root, hang_at = RunConfig.from_json(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    if hang_at >= 0:   # simulate a process that is alive mid-run when the kill comes
        step = train.Trainer.step
        def hanging_step(self, acts):
            step(self, acts)
            if self.step_idx == hang_at:
                (root / "hanging").write_text(str(self.step_idx))
                time.sleep(600)
        train.Trainer.step = hanging_step
    train.run_training(cfg, root, progress=False)
""")

def run_worker(tmp:Path, cfg, root:Path, hang_at=-1, torchrun=0):
    script = tmp / "worker.py"; script.write_text(WORKER)
    cfg_path = tmp / "cfg.json"; cfg.to_json(cfg_path)
    cmd = [PY, str(script), str(cfg_path), str(root), str(hang_at)]
    if torchrun: cmd = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def saved(root:Path) -> dict:
    d = runs_dir("tiny", root) / "saes"
    return {p.name: load_file(next(p.glob("*.safetensors"))) for p in sorted(d.iterdir())}

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "One uninterrupted single-process run of the train stage."
    tmp = tmp_path_factory.mktemp("ref"); root = tmp / "root"; write_inputs(root)
    p = run_worker(tmp, tiny_cfg(), root); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return root

def test_names_and_specs_30_layers():
    "A SmolLM2-sized study: 30 baseline SAEs, each distinct group of the nested partitions once, even groups, 29 small."
    parts, groups = {}, [[l] for l in range(29)]
    while True:                      # nested partitions: merge the first pair of neighbours each time
        parts[str(len(groups))] = [list(g) for g in groups]
        if len(groups) == 1: break
        i = (len(groups) * 7) % (len(groups) - 1); groups = groups[:i] + [groups[i] + groups[i + 1]] + groups[i + 2:]
    gj = {"layers": list(range(29)), "G_hat": 7, "partitions": parts,
          "even_groups": {"7": [list(range(a, b)) for a, b in zip([0, 5, 9, 13, 17, 21, 25], [5, 9, 13, 17, 21, 25, 29])]}}
    specs = specs_for_study(gj, 30, 576, get_preset("smollm2-cpu").sae)
    kinds = [s.name.split("-")[0] if s.name.startswith(("even", "small")) else ("group" if len(s.layers) > 1 else "base") for s in specs]
    assert kinds.count("base") == 30 and kinds.count("group") == 28 and kinds.count("even") == 7 and kinds.count("small") == 29
    assert {s.d_sae for s in specs if s.name.startswith("small")} == {round(4 * 7 / 30 * 576)}
    layout = study_layout(gj, 30)
    assert all(len(set(layout["G"][G].values())) == G + 1 for G in range(1, 30))   # G groups + the last layer
    assert set(n for arm in [layout["baseline"], layout["even"], layout["small"], *layout["G"].values()] for n in arm.values()) \
        == {s.name for s in specs}
    assert group_name([3, 1, 2]) == "L01-03" and group_name([0, 2]) == "L00_02"

def test_sigkill_mid_run_resumes_exactly(reference, tmp_path):
    "Kill -9 a run after step 5 (checkpoint at step 4 on disk), rerun the stage: same SAEs as the uninterrupted run."
    root = tmp_path / "root"; write_inputs(root)
    p = run_worker(tmp_path, tiny_cfg(), root, hang_at=5)
    t0 = time.time()
    while not (root / "hanging").exists():
        assert p.poll() is None, p.stdout.read()
        assert time.time() - t0 < 240, "worker never reached step 5"
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    ckpt = runs_dir("tiny", root) / "train_ckpt.pt"
    assert load_checkpoint(ckpt)["trainer"]["step"] == 4
    assert not (runs_dir("tiny", root) / "saes").exists()
    p = run_worker(tmp_path, tiny_cfg(), root); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    ref, got = saved(reference), saved(root)
    assert ref.keys() == got.keys() and len(ref) == 10
    for name in ref:
        for k in ref[name]: assert torch.equal(ref[name][k], got[name][k]), (name, k)
    a, b = load_json(results_dir("tiny", reference) / "train.json"), load_json(results_dir("tiny", root) / "train.json")
    assert a["saes"]["L01-02"]["tokens"] == b["saes"]["L01-02"]["tokens"] and a["n_steps"] == b["n_steps"] == 10
    assert not ckpt.exists()

def test_two_gloo_processes_match_one(reference, tmp_path):
    "torchrun with 2 CPU processes (gloo): each trains its share of the SAEs; rank 0 saves the same SAEs as one process."
    root = tmp_path / "root"; write_inputs(root)
    p = run_worker(tmp_path, tiny_cfg(), root, torchrun=2); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    ref, got = saved(reference), saved(root)
    assert ref.keys() == got.keys()
    for name in ref:
        for k in ref[name]: torch.testing.assert_close(got[name][k], ref[name][k], rtol=1e-5, atol=1e-6)
    info = load_json(results_dir("tiny", root) / "train.json")
    assert info["world_size"] == 2 and info["n_saes"] == 10
    assert info["saes"].keys() == load_json(results_dir("tiny", reference) / "train.json")["saes"].keys()

def test_checkpoint_write_is_atomic(tmp_path):
    "A save that fails half-way leaves the previous checkpoint readable and no temporary file."
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception): save_checkpoint({"step": 2, "bad": lambda: 0}, path)   # a lambda cannot be pickled
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]

def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path):
    "NaN activations at layer 2 from step 5 on: NonFiniteError names the SAEs, the layer and the step; the step-4 checkpoint stays."
    from groupsae.models import load_model, blocks
    cfg = get_preset("tiny"); model, tok = load_model(cfg.model.name)
    windows = torch.randint(5, 2000, (40, 32)); windows[:, 0] = tok.bos_token_id
    calls = {"n": 0}
    def poison(module, args, out):
        calls["n"] += 1
        if calls["n"] > 5: out[0].fill_(float("nan")) if isinstance(out, tuple) else out.fill_(float("nan"))
    h = blocks(model)[2].register_forward_hook(poison)
    try:
        tr = Trainer([SAESpec("L01-02", [1, 2], 64, 4), SAESpec("L00", [0], 64, 4)], 64, {0: 1., 1: 1., 2: 1.}, cfg.sae, cfg.train)
        with pytest.raises(NonFiniteError, match=r"SAE 'L01-02' \(layers \[1, 2\]\) at step 5: the input activations of layer 2"):
            fit(tr, model, windows, 1200, 4, {tok.bos_token_id}, checkpoint=tmp_path / "c.pt", checkpoint_every=2,
                log_every=3, progress=False)
    finally: h.remove()
    sd = load_checkpoint(tmp_path / "c.pt")["trainer"]
    assert sd["step"] == 4 and all(torch.isfinite(v).all() for v in sd["saes"]["L01-02"].values())

@pytest.mark.parametrize("bf16", [False, True])
def test_flops_match_flop_counter(bf16):
    "FlopCounterMode on one trainer step counts exactly the analytic dense products (and the CSR ones as dense), AuxK off and on; totals add the sparse ones."
    from torch.utils.flop_counter import FlopCounterMode
    cfg = override(get_preset("tiny"), **{"train.bf16": bf16})
    torch.manual_seed(0)
    n, d, D, k = 24, 64, 512, 16              # 24 tokens x 16 picks < 512 latents: some never fire, so AuxK has dead ones
    for dead_tokens in (10**9, 1):            # AuxK never / from the second step on (every latent that did not fire is dead)
        sae_cfg = override(cfg, **{"sae.dead_tokens": dead_tokens}).sae
        tr = Trainer([SAESpec("L00", [0], D, k)], d, {0: 1.0}, sae_cfg, cfg.train)
        tr.step(torch.randn(1, n, d))         # step 0 initialises b_dec (geometric median)
        before, aux_before = tr.accounting()["L00"]["flops"], tr.aux_tokens.clone()
        with FlopCounterMode(display=False) as fc: tr.step(torch.randn(1, n, d))
        m, ka = ((tr.aux_tokens - aux_before)[0] // n).tolist()
        assert (m > 0) == (dead_tokens == 1) and ka == min(m, d // 2)
        csr = 2 * (2 * n * D * d)             # the counter charges each of the two CSR weight-gradient products as dense
        dense = sae_step_flops(n, d, D, k, sparse=False) + auxk_flops(n * m, d)
        assert fc.get_total_flops() == dense + csr, (bf16, dead_tokens, fc.get_flop_counts())
        total = sae_step_flops(n, d, D, k) + auxk_flops(n * m, d)
        assert tr.accounting()["L00"]["flops"] - before == total

def test_wandb_is_optional(monkeypatch):
    assert wandb_logger(False, "x", {}) is None
    monkeypatch.setitem(sys.modules, "wandb", None)          # as if not installed
    with pytest.raises(ImportError, match="pip install wandb"): wandb_logger(True, "x", {})

def test_bad_inputs_fail_clearly():
    cfg = get_preset("tiny")
    with pytest.raises(Exception, match="no input scale for layers \\[1\\]"):
        Trainer([SAESpec("L01", [1], 64, 4)], 64, {0: 1.0}, cfg.sae, cfg.train)
    tr = Trainer([SAESpec("L01", [1], 64, 4)], 64, {1: 1.0}, cfg.sae, cfg.train)
    with pytest.raises(ValueError, match="expected \\[1, n_tokens, 64\\]"): tr.step(torch.randn(2, 10, 64))
    assert assign_ranks([3, 1, 1, 1], 2) == [0, 1, 1, 1]
