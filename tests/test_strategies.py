"""The strategies stage (issue 28): each arm's FLOPs against a naive count, the shared dictionaries against naive
per-layer loops, transfer from the neighbour's saved weights, equal cost at Ĝ's budget, one-line errors that lose
nothing, and `groupsae strategies --preset tiny --out DIR` end to end."""
import json, math, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from groupsae.config import ConfigError, StrategiesConfig, STRATEGY_ARMS, get_preset, override, results_dir, runs_dir, load_json, repo_root
from groupsae.flops import sae_step_flops
from groupsae.strategies import (ACCOUNTINGS, Dictionary, EQUAL_TOL, ghat_point, ghat_wins, plan_strategies, point_costs, vector_flops)
from groupsae.strategy_models import CrossCoder, MultiLayerSAE, layer_fvu, standardise

ROOT = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "groupsae")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
ENV.pop("GROUPSAE_DEBUG", None)

TOY = {"layers": [0, 1, 2, 3, 4], "G_hat": 2,
       "partitions": {"1": [[0, 1, 2, 3, 4]], "2": [[0, 1], [2, 3, 4]], "3": [[0, 1], [2], [3, 4]], "4": [[0], [1], [2], [3, 4]],
                      "5": [[0], [1], [2], [3], [4]]},
       "amad_weighted": {"1": 0.5, "2": 0.3, "3": 0.25, "4": 0.15, "5": 0.0}}
D = 64

def toy_plan(arms=None, A=3.0, **kw):
    scfg = StrategiesConfig(arms=arms, multiples=[0.75, 1, 4], fractions=[0.25, 1, 2], thetas=[0.55, 0.4, 0.2, 0.1], seeds=3, min_span=2.5, **kw)
    return plan_strategies(scfg, TOY, D, get_preset("tiny").sae, 40, lambda w: 31 * w, 10_000, A * vector_flops(D, 4 * D))

# --- FLOPs against a naive count -------------------------------------------------------------------------------------

def naive_flops(point, d_model):
    "Count every vector one at a time: per token, per layer read or written, 10·d_model·d_sae (the paper's T)."
    total = 0
    for d in point.runs[0]:
        per_token = sum(10 * d_model * d.d_sae for _ in (d.layers if d.kind != "sae" else [d.layers[0]]))
        total += per_token * d.tokens
    return total

@pytest.mark.parametrize("arm", STRATEGY_ARMS)
def test_flops_against_naive_count(arm):
    pts = toy_plan([arm] if arm != "group_weighted" else ["group_amad", "group_weighted"])
    A = 3.0 * vector_flops(D, 4 * D)
    for p in (q for q in pts if q.arm == arm):
        c = point_costs(p, D, A, 31 * 40)
        assert c["sae_only"] == naive_flops(p, D), p.id
        assert c["paper"] == pytest.approx(A * 31 * 40 + naive_flops(p, D))
        assert c["fair"] == pytest.approx(A * max(d.tokens for d in p.runs[0]) + naive_flops(p, D))

@pytest.mark.parametrize("n_layers,expansion", [(2, 1), (3, 2), (5, 4)])
def test_shared_dictionary_flops_match_flop_counter(n_layers, expansion):
    "T of an MLSAE's position (n_layers vectors) and of a crosscoder's (one vector n_layers times as wide) against 05a_flops' FlopCounterMode count of a dense SAE step."
    assert Dictionary("mlsae", tuple(range(n_layers)), expansion * D, 4, 1, 1).flops(D) == sae_step_flops(D, expansion, n_layers)
    assert Dictionary("crosscoder", tuple(range(n_layers)), expansion * n_layers * D, 4, 1, 1).flops(D) == sae_step_flops(n_layers * D, expansion, 1)

# --- MLSAE and crosscoder against naive per-layer loops -----------------------------------------------------------------

@pytest.mark.parametrize("n_layers,n,d,width,k", [(2, 30, 8, 16, 3), (4, 50, 16, 64, 5)])
def test_mlsae_forward_and_loss_match_a_loop_over_layers(n_layers, n, d, width, k):
    torch.manual_seed(n_layers)
    ml = MultiLayerSAE(d, width, k, list(range(n_layers)), [1.0] * n_layers, seed=1)
    with torch.no_grad(): ml.sae.b_dec.normal_(0, 0.3); ml.sae.b_enc.normal_(0, 0.1)
    x = torch.randn(n_layers, n, d) * torch.linspace(0.1, 10, n_layers)[:, None, None] + 2
    out = ml(x)
    fvus = []
    for l in range(n_layers):
        mu, sd = x[l].mean(-1, keepdim=True), x[l].std(-1, keepdim=True, correction=0)
        zs = (x[l] - mu) / sd
        pre = (zs - ml.sae.b_dec) @ ml.sae.W_enc.T + ml.sae.b_enc
        v, i = pre.topk(k, dim=-1)
        code = torch.zeros(n, width).scatter(1, i, v.relu())
        rec = code @ ml.sae.W_dec + ml.sae.b_dec
        torch.testing.assert_close(out.x_hat[l], rec * sd + mu, rtol=1e-4, atol=1e-4)
        fvus.append(((zs - rec) ** 2).sum() / ((zs - zs.mean(0)) ** 2).sum())
    torch.testing.assert_close(out.loss, torch.stack(fvus).mean(), rtol=1e-5, atol=1e-6)

@pytest.mark.parametrize("n_layers,n,d,width,k", [(2, 30, 8, 12, 3), (4, 40, 16, 48, 6)])
def test_crosscoder_forward_and_loss_match_a_loop_over_layers(n_layers, n, d, width, k):
    torch.manual_seed(n_layers)
    cc = CrossCoder(d, width, k, list(range(n_layers)), [1.0] * n_layers, seed=2)
    with torch.no_grad(): cc.sae.b_dec.normal_(); cc.sae.b_enc.normal_(0, 0.1)     # biases that matter
    x = torch.randn(n_layers, n, d) * torch.linspace(0.5, 4, n_layers)[:, None, None]
    out = cc(x)
    W_enc, W_dec, b_dec = cc.sae.W_enc.view(width, n_layers, d), cc.sae.W_dec.view(width, n_layers, d), cc.sae.b_dec.view(n_layers, d)
    pre = sum(x[l] @ W_enc[:, l].T for l in range(n_layers)) + cc.sae.b_enc         # Anthropic's encoder: Σ_l W_enc^l a^l + b
    v, i = pre.topk(k, dim=-1)
    code = torch.zeros(n, width).scatter(1, i, v.relu())
    fvus = []
    for l in range(n_layers):
        rec = code @ W_dec[:, l] + b_dec[l]
        torch.testing.assert_close(out.x_hat[l], rec, rtol=1e-4, atol=1e-4)
        fvus.append(((x[l] - rec) ** 2).sum() / ((x[l] - x[l].mean(0)) ** 2).sum())
    torch.testing.assert_close(out.loss, torch.stack(fvus).mean(), rtol=1e-5, atol=1e-6)

# --- equal cost at Ĝ's budget -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,d_model", [("smollm2-cpu", 576), ("gemma3-cpu", 640), ("tiny-toy", D)])
def test_points_at_ghat_budget_cost_the_same_within_2pct(preset, d_model):
    if preset == "tiny-toy": pts, A, N = toy_plan(), 3.0 * vector_flops(D, 4 * D), 31 * 40
    else:
        res, cfg = ROOT / "results" / preset, get_preset(preset)
        g, costs = load_json(res / "groups.json"), load_json(res / "costs.json")
        A, N = costs["A"] / costs["n_tokens"], 255 * 393
        pts = plan_strategies(cfg.strategies, g, d_model, cfg.sae, 393, lambda w: 255 * w, 5_400, A, cfg.grouping.threshold)
    ref = point_costs(ghat_point(pts), d_model, A, N)
    at = [p for p in pts if p.at_ghat]
    assert {p.arm for p in at} == set(STRATEGY_ARMS) and all(p.n_seeds == 3 for p in at)
    for p in at:
        assert "sae_only" in p.matched or p.matched == ("fair",), p.id
        for a in p.matched:
            assert abs(point_costs(p, d_model, A, N)[a] / ref[a] - 1) <= EQUAL_TOL, (p.id, a)
    for arm in STRATEGY_ARMS:   # every arm: 3 or more budgets spanning the preset's span
        costs_ = sorted({point_costs(p, d_model, A, N)["sae_only"] for p in pts if p.arm == arm})
        assert len(costs_) >= 3 and costs_[-1] / costs_[0] >= (2.5 if preset == "tiny-toy" else 8), (arm, costs_)

def test_the_rule_a_tie_is_not_a_win():
    win = {"fvu": {"ci95": [0.001, 0.01]}, "delta_ce": {"ci95": [0.2, 1.0]}}
    assert ghat_wins(win)
    assert not ghat_wins(win | {"fvu": {"ci95": [-0.001, 0.01]}})
    assert not ghat_wins(win | {"delta_ce": {"ci95": [0.0, 1.0]}})

def test_unknown_arm_and_unreachable_budget_are_config_errors():
    with pytest.raises(ConfigError, match="Fix: use some of"): override(get_preset("tiny"), **{"strategies.arms": ["sparse_magic"]})
    with pytest.raises(ConfigError, match="raise the smallest of strategies.multiples"):
        plan_strategies(StrategiesConfig(arms=["transfer_bwd"], multiples=[0.25, 1, 2]), TOY, D, get_preset("tiny").sae, 40,
                        lambda w: 31 * w, 10_000, 0.0)
    with pytest.raises(ConfigError, match="corpus gives"):
        plan_strategies(StrategiesConfig(arms=["per_layer"], fractions=[0.25, 1, 40]), TOY, D, get_preset("tiny").sae, 40,
                        lambda w: 31 * w, 200, 0.0)

# --- the stage, on the tiny model -----------------------------------------------------------------------------------------

def groupsae(*args, root):
    return subprocess.run([EXE, *args, "--preset", "tiny", "--out", str(root)], capture_output=True, text=True, env=ENV, timeout=1200)

def tree(folder):
    "Every file under `folder` with its size and modification time (what 'loses nothing' compares)."
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}

@pytest.fixture(scope="module")
def tiny_strategies(tmp_path_factory):
    "A tiny study (activations .. train, in-process) and one `groupsae strategies --preset tiny --out ROOT`."
    from groupsae.cli import run_stages
    root = tmp_path_factory.mktemp("tiny_strategies")
    torch.set_num_threads(1)
    run_stages(get_preset("tiny"), ("activations", "distances", "group", "costs", "train"), root, log=lambda m: None)
    p = groupsae("strategies", root=root)
    assert p.returncode == 0, p.stderr[-3000:]
    return root, p

def test_strategies_end_to_end(tiny_strategies):
    root, p = tiny_strategies
    st = load_json(results_dir("tiny", root) / "strategies.json")
    assert set(st["arms"]) == set(STRATEGY_ARMS) and {"G_hat", "n_tokens", "arms"} <= set(st)
    keys = {"tokens_per_sae", "n_saes", "d_sae", "flops", "wall_s", "n_seeds", "fvu", "fvu_worst", "delta_ce", "kl", "dead_frac",
            "fvu_ci95", "delta_ce_ci95", "at_ghat_budget"}
    g = next(q for q in st["arms"]["group_amad"] if q["at_ghat_budget"] and q["knob"]["x"] == 1)
    for arm, pts in st["arms"].items():
        assert len(pts) >= 3
        for q in pts:
            assert keys <= set(q) and set(q["flops"]) == set(ACCOUNTINGS), (arm, q["id"])
            assert len(q["fvu_per_layer"]) == len(st["layers"]) and len(q["dead_per_layer"]) == len(st["layers"])
            assert q["fvu_worst"] >= q["fvu"] - 1e-9 and 0 <= q["dead_frac"] <= 1
            if q["at_ghat_budget"]:
                assert q["n_seeds"] == get_preset("tiny").strategies.seeds and q["fvu_ci95"] and q["delta_ce_ci95"]
                for a in q["matched"]: assert abs(q["flops"][a] / g["flops"][a] - 1) <= EQUAL_TOL
            else: assert q["n_seeds"] == 1
    assert g["n_reused"] == g["n_saes"]                              # seed 0's Ĝ SAEs are the train stage's (tiny trains one seed)
    assert "reused" in st["reuse"]["study"] and "not reused" in st["reuse"]["scaling"]
    for a in ACCOUNTINGS: assert isinstance(st["verdict"][a]["beats_per_layer"], bool)
    summary = load_json(results_dir("tiny", root) / "summary.json")
    assert all(f"strategies_beats_per_layer_{a}" in summary for a in ACCOUNTINGS)
    figs = root / "figures" / "tiny"
    assert (figs / "fig_pareto.png").stat().st_size > 10_000 and (figs / "fig_pareto_layers.png").exists()
    assert "Verdict" in (figs / "table_strategies.md").read_text()

def test_second_run_is_skipped_and_force_retrains_nothing(tiny_strategies):
    root, _ = tiny_strategies
    p = groupsae("strategies", root=root)
    assert p.returncode == 0 and "up to date, skipped" in p.stdout
    before = tree(runs_dir("tiny", root) / "strategies" / "saes")
    p = groupsae("strategies", "--force", root=root)
    assert p.returncode == 0, p.stderr[-2000:]
    assert ": trained " not in p.stdout                                   # no point trained again
    assert tree(runs_dir("tiny", root) / "strategies" / "saes") == before

@pytest.mark.parametrize("case", ["unknown arm", "unreachable budget", "missing cache file"])
def test_errors_are_one_line_naming_the_fix_and_lose_nothing(tiny_strategies, case):
    root, _ = tiny_strategies
    watched = [results_dir("tiny", root), runs_dir("tiny", root) / "strategies", root / "figures" / "tiny"]
    before = [tree(w) for w in watched]
    if case == "unknown arm": p = groupsae("strategies", "--force", "--set", 'strategies.arms=["sparse_magic"]', root=root)
    elif case == "unreachable budget": p = groupsae("strategies", "--force", "--set", "strategies.multiples=[0.01, 1, 6]", root=root)
    else:
        acts = runs_dir("tiny", root) / "acts" / "acts.npy"
        acts.rename(acts.with_suffix(".away"))
        try: p = groupsae("strategies", "--force", root=root)
        finally: acts.with_suffix(".away").rename(acts)
    lines = p.stderr.strip().splitlines()
    assert p.returncode in (1, 2) and len(lines) == 1 and "Fix:" in lines[0], p.stderr[-2000:]
    if case == "missing cache file": assert "groupsae activations --preset tiny --force" in lines[0]
    after = [tree(w) for w in watched]
    for w, b, a in zip(watched, before, after):
        assert {k: v for k, v in a.items() if k not in ("config.json", "timings.json")} == \
               {k: v for k, v in b.items() if k not in ("config.json", "timings.json")}, w

def test_strategies_with_per_dimension_normalisation(tmp_path):
    "sae.normalize='dim' (the massive-activations recipe): the SAE arms train with the activations stage's statistics; a transfer SAE keeps its own layer's; so do the MLSAE and the crosscoder."
    from groupsae.cli import run_stages
    from groupsae.geometry import LayerStats
    from groupsae.sae import TopKSAE
    torch.set_num_threads(1)
    cfg = override(get_preset("tiny"), **{"sae.normalize": "dim", "strategies.arms": ["per_layer", "transfer_fwd", "mlsae", "crosscoder"]})
    run_stages(cfg, ("activations", "distances", "group", "costs", "train", "strategies"), tmp_path, log=lambda m: None)
    st = load_json(results_dir("tiny", tmp_path) / "strategies.json")
    assert set(st["arms"]) == {"per_layer", "group_amad", "transfer_fwd", "mlsae", "crosscoder"}
    stats = LayerStats.load(runs_dir("tiny", tmp_path) / "dim_stats.safetensors")
    saved = sorted((runs_dir("tiny", tmp_path) / "strategies" / "saes").glob("tfwd-L02-*"))
    assert saved
    sae = TopKSAE.load(saved[0])
    ref = TopKSAE(sae.d_model, sae.d_sae, sae.k, layers=sae.layers, scales=sae.scales, normalize="dim")
    ref.set_stats_(*stats.sae_stats([2])[:2])
    torch.testing.assert_close(sae.x_mean, ref.x_mean); torch.testing.assert_close(sae.x_unit, ref.x_unit)   # layer 2's, not its neighbour's
    from groupsae.strategy_models import load_dictionary
    for prefix in ("mlsae", "cc"):   # the shared dictionaries (MLSAE, crosscoder): each layer standardised with its own statistics
        m = load_dictionary(sorted((runs_dir("tiny", tmp_path) / "strategies" / "saes").glob(f"{prefix}-L*"))[0])
        assert m.normalize == "dim"
        mean, std, _ = stats.sae_stats(m.layers)
        s = torch.tensor(m.scales)[:, None]
        unit = m.sae.x_unit.view(len(m.layers), -1) / (std * s)     # std·scale times one constant per dictionary (06_sae's 1/d)
        torch.testing.assert_close(m.sae.x_mean.view(len(m.layers), -1), mean * s)
        torch.testing.assert_close(unit, torch.full_like(unit, unit[0, 0].item()))
    for arm in ("mlsae", "crosscoder"):
        for p in st["arms"][arm]: assert 0 < p["fvu"] < 2, (arm, p["fvu"])
