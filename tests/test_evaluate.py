"""Evaluation checks that need the installed package, the real embedded model, or whole stage runs in a temp folder."""
import math
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from groupsae.config import get_preset, load_json, results_dir, runs_dir, save_json, savefig
from groupsae.models import ModelLoadError, blocks, load_model, random_model, tiny_config
from groupsae.sae import TopKSAE
from groupsae.data import keep_mask, split_windows
from groupsae.activations import estimate_scales, run_activations
from groupsae.evaluate import (ReconStats, next_token_losses, delta_ce_pct, clean_pass, forward_from_layer, block_kwargs,
                               spliced_forward, splice, layer_scale, reconstruct, evaluate, eval_windows, run_evaluation)
from groupsae.eval_report import eval_plan, plan_pairs, read_per_layer_csv
from groupsae import eval_figures

GROUPS = {"layers": [0, 1, 2], "G_hat": 2, "partitions": {"1": [[0, 1, 2]], "2": [[0], [1, 2]], "3": [[0], [1], [2]]},
          "amad": {"1": 0.3, "2": 0.1, "3": 0.0}, "even_groups": {"2": [[0, 1], [2]]}, "threshold": 0.2}
CONTRACT = ("n_layers", "G_hat", "amad_G_hat", "baseline_fvu", "baseline_delta_ce", "ghat_fvu", "ghat_delta_ce",
            "compute_saving_paper", "compute_saving_fair")

def test_public_api_importable():
    import groupsae.evaluate as ev, groupsae.eval_report as er
    for name in ("run_evaluation", "evaluate", "forward_from_layer", "clean_pass", "layer_scale", "ReconStats"):
        assert name in ev.__all__
    for name in ("eval_plan", "summarize", "per_layer_csv", "compute_savings"): assert name in er.__all__
    for name in ("fig_quality_vs_amad", "fig_quality_vs_compute", "fig_per_layer", "table1"): assert name in eval_figures.__all__

def test_metrics_by_hand():
    x = torch.tensor([[1., 2], [3, 4], [5, 0]]); x_hat = torch.tensor([[1., 1], [3, 3], [5, 0]])
    st = ReconStats(4); st.update(x, x_hat, torch.tensor([[2., 0], [1, 3], [0, 0]]), torch.tensor([[0, 1], [2, 0], [1, 3]]))
    r = st.result()
    assert r["fvu"] == pytest.approx(2 / 16) and r["mse"] == pytest.approx(2 / 6)
    assert r["ev_saelens"] == pytest.approx((0.75 + 0.75 + 1) / 3)          # per-token mean, not 1 - FVU
    assert r["l0"] == pytest.approx(3 / 3) and r["dead_frac"] == pytest.approx(0.5)
    clean = torch.tensor([[0., math.log(3)]]).log_softmax(-1)
    ce, kl = next_token_losses(clean, torch.zeros(1, 2), torch.tensor([1]))
    assert ce.item() == pytest.approx(math.log(2)) and kl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert delta_ce_pct(math.log(2), -math.log(0.75)) == pytest.approx(140.942, abs=1e-3)

@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_resume_reproduces_clean_logits(name):
    model, _ = load_model(name)
    ids = torch.randint(0, 1000, (3, 10))
    with torch.no_grad(): ref = model(ids).logits
    cp = clean_pass(model, ids)
    for layer in range(-1, len(blocks(model))):
        h = model.get_input_embeddings()(ids) if layer == -1 else cp.resid[layer]
        torch.testing.assert_close(forward_from_layer(model, h, layer), ref, rtol=1e-5, atol=1e-5)
        if layer >= 0: torch.testing.assert_close(forward_from_layer(model, h, layer, cp.calls), ref, rtol=1e-5, atol=1e-5)

def test_resume_smollm2():
    torch.set_num_threads(2)
    model, tok = load_model("smollm2")
    ids = tok("Now is the winter of our discontent made glorious summer by this sun of York", return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
    with torch.no_grad(): ref = model(ids).logits
    cp = clean_pass(model, ids)
    for layer in (0, 14, 28, 29):
        torch.testing.assert_close(forward_from_layer(model, cp.resid[layer], layer, cp.calls), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(forward_from_layer(model, cp.resid[layer], layer, block_kwargs(model, cp.resid[layer])), ref,
                                   rtol=1e-4, atol=1e-4)

def test_block_kwargs_unknown_family():
    class Cfg: model_type = "bert"
    class M: config = Cfg()
    with pytest.raises(ModelLoadError, match="'bert' .* is not supported"): block_kwargs(M(), torch.zeros(1, 2, 4))

def test_group_sae_uses_each_layers_own_scale():
    "Two layers of very different norms served by one group SAE: each is fed at its own scale (the authors used the first's)."
    model = random_model(tiny_config("llama"), seed=0)
    with torch.no_grad():
        blocks(model)[1].mlp.down_proj.weight.mul_(300); blocks(model)[1].self_attn.o_proj.weight.mul_(300)
    ids = torch.randint(3, 1000, (4, 16))
    scales = estimate_scales(model, ids, [0, 2], n_tokens=10_000)
    assert scales[0] / scales[1] > 10                                # layer 2 is >10x larger than layer 0
    gsae = TopKSAE(64, 256, 8, layers=[0, 2], scales=scales.tolist(), seed=0)
    seen = []
    enc = gsae.encode
    gsae.encode = lambda x: (seen.append(x.norm(dim=-1).mean().item()), enc(x))[1]
    res = evaluate(model, ids, {"G": gsae}, [("G", 0), ("G", 2)], dict(zip([0, 2], scales.tolist())), batch_size=4, ce=False,
                   progress=False)
    assert res.pairs[("G", 0)]["scale"] == pytest.approx(scales[0].item())
    assert res.pairs[("G", 2)]["scale"] == pytest.approx(scales[1].item())
    assert seen[0] == pytest.approx(1.0, rel=1e-4) and seen[1] == pytest.approx(1.0, rel=1e-4)   # both at mean norm 1
    with pytest.raises(ValueError, match="trained with scale"): layer_scale(gsae, 2, {2: scales[0].item()})
    # the authors' rule would feed layer 2 at layer 0's scale: mean norm scales[0]/scales[1] > 10, far off training
    x2 = clean_pass(model, ids).resid[2].flatten(0, 1)
    assert (x2 * scales[0]).norm(dim=-1).mean() > 10

def test_pairs_once_and_one_clean_pass_per_batch():
    model, tok = load_model("tiny-llama")
    wins = torch.randint(3, 1000, (6, 10)); wins[:, 0] = tok.bos_token_id
    plan = eval_plan(GROUPS, 4)
    names = sorted({n for n, _ in plan_pairs(plan)})
    saes = {n: TopKSAE(64, 128, 8, layers=sorted(l for s in plan.values() for l, m in s["layers"].items() if m == n), seed=i)
            for i, n in enumerate(names)}
    count = {"enc": 0, "block0": 0, "block3": 0}
    for s in saes.values():
        s.encode = (lambda f: lambda x: (count.__setitem__("enc", count["enc"] + 1), f(x))[1])(s.encode)
    h0 = blocks(model)[0].register_forward_hook(lambda *a: count.__setitem__("block0", count["block0"] + 1))
    h3 = blocks(model)[3].register_forward_hook(lambda *a: count.__setitem__("block3", count["block3"] + 1))
    pairs = plan_pairs(plan)
    res = evaluate(model, wins, saes, pairs + pairs[:3], None, {tok.bos_token_id}, batch_size=4, progress=False)
    h0.remove(); h3.remove()
    n_batches = 2
    assert len(res.pairs) == len(pairs)
    assert count["enc"] == n_batches * len(pairs)                    # each pair encoded once per batch, whatever the G
    assert count["block0"] == n_batches                              # one clean pass per batch, resumes never rerun block 0
    assert count["block3"] == n_batches * (1 + sum(l < 3 for _, l in pairs))   # block 3 reruns only after splices below it

def test_resume_equals_naive_full_forward():
    model, tok = load_model("tiny-neox")
    ids = torch.randint(3, 1000, (2, 12)); ids[:, 0] = tok.bos_token_id
    keep = keep_mask(ids, {tok.bos_token_id})
    sae = TopKSAE(64, 256, 8, layers=[2], scales=[3.0], seed=0)
    cp = clean_pass(model, ids)
    f = splice(sae, 3.0, keep)
    with torch.no_grad():
        hd = blocks(model)[2].register_forward_hook(lambda m, a, o: (f(o[0]), *o[1:]) if isinstance(o, tuple) else f(o))
        naive = model(ids).logits
        hd.remove()
    torch.testing.assert_close(forward_from_layer(model, f(cp.resid[2]), 2, cp.calls), naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spliced_forward(model, ids, {2: f}), naive, rtol=1e-5, atol=1e-5)

def test_eval_windows_disjoint():
    sp = split_windows(torch.arange(60).reshape(30, 2), n_eval=6, seed=1)
    w = eval_windows(sp, 4, 2)
    assert len(w) == 4 and not set(sp.eval_idx[:4].tolist()) & set(sp.train_idx.tolist())
    with pytest.raises(ValueError, match="used for training"): eval_windows(sp, 4, 2, train_ids=sp.eval_idx[3:4])

def _study(root):
    (Path(root) / "settings.ini").touch()
    cfg = get_preset("tiny")
    sj = run_activations(cfg, root=root)
    rd = results_dir("tiny", root)
    save_json(GROUPS, rd / "groups.json")
    plan = eval_plan(GROUPS, 4)
    for i, n in enumerate(sorted({n for n, _ in plan_pairs(plan)})):
        ls = sorted(l for s in plan.values() for l, m in s["layers"].items() if m == n)
        TopKSAE(64, 128, 8, layers=ls, scales=[sj["scales"][l] for l in ls], seed=i).save(runs_dir("tiny", root) / "saes" / n)
    return cfg, rd, plan

def test_run_evaluation_end_to_end(tmp_path):
    cfg = get_preset("tiny")
    (tmp_path / "settings.ini").touch()
    with pytest.raises(FileNotFoundError, match="groupsae group"): run_evaluation(cfg, tmp_path, progress=False)
    cfg, rd, plan = _study(tmp_path)
    save_json({"A": 100.0, "T": 10.0}, rd / "costs.json")
    save_json({"baseline_detection": 0.8}, rd / "summary.json")       # another stage's key survives
    ev = run_evaluation(cfg, tmp_path, progress=False)
    csv1 = (rd / "eval_per_layer.csv").read_bytes()
    summary, on_disk = load_json(rd / "summary.json"), load_json(rd / "eval.json")
    assert set(CONTRACT) <= set(summary) and summary["baseline_detection"] == 0.8
    assert summary["compute_saving_fair"] == pytest.approx(1 - (100 + 3 * 10) / (100 + 4 * 10), rel=1e-3)
    assert summary["n_layers"] == 4 and summary["G_hat"] == 2 and summary["amad_G_hat"] == 0.1
    rows = read_per_layer_csv(rd / "eval_per_layer.csv")
    assert sorted(rows) == sorted(plan_pairs(plan))
    for kind, G in (("amad", "3"), ("amad", "2")):
        s = on_disk["settings"][kind][G]
        assert s["mean"]["fvu"] == pytest.approx(sum(rows[(s["saes"][[l in g for g in s["groups"]].index(True)], l)]["fvu"]
                                                     for l in range(3)) / 3, rel=2e-3)
    assert summary["baseline_fvu"] == pytest.approx(on_disk["settings"]["amad"]["3"]["mean"]["fvu"], rel=1e-3)
    assert summary["ghat_delta_ce"] == pytest.approx(on_disk["settings"]["amad"]["2"]["mean"]["delta_ce"], rel=1e-3)
    assert rows[("L00-02", 2)]["scale"] != rows[("L00-02", 0)]["scale"]
    assert on_disk["config_hash"] == cfg.hash() and on_disk["n_pairs"] == len(rows)
    assert all(s["spliced_all"] is not None for k in on_disk["settings"].values() for s in k.values())
    # same config, same files (timings aside)
    run_evaluation(cfg, tmp_path, progress=False)
    assert (rd / "eval_per_layer.csv").read_bytes() == csv1
    # cheaper modes: next-token metrics on fewer tokens, all-at-once splices only at G_hat
    ev2 = run_evaluation(cfg, tmp_path, progress=False, ce_tokens=62, splice="ghat")
    assert ev2["n_ce_windows"] == 2 and ev2["n_tokens"] == ev["n_tokens"] and ev2["n_ce_positions"] < ev["n_ce_positions"]
    assert ev2["settings"]["amad"]["1"]["spliced_all"] is None and ev2["settings"]["even"]["2"]["spliced_all"] is not None
    rows2 = read_per_layer_csv(rd / "eval_per_layer.csv")
    assert all(rows2[p]["fvu"] == rows[p]["fvu"] for p in rows)
    # figures draw from the file content, deterministically
    for name, fig in (("a", lambda: eval_figures.fig_quality_vs_amad(on_disk)),
                      ("c", lambda: eval_figures.fig_quality_vs_compute(on_disk, load_json(rd / "costs.json"))),
                      ("p", lambda: eval_figures.fig_per_layer(on_disk, 2))):
        b1 = savefig(fig(), name, "tiny", tmp_path).read_bytes()
        assert savefig(fig(), name, "tiny", tmp_path).read_bytes() == b1
    md, csv = eval_figures.table1(on_disk)      # the tiny preset has a claim sample: intervals, and a G = 1 row
    assert csv.count("\n") == 6 and all(f"| {n} |" in md for n in eval_figures.ARM_LABELS.values()) and "95% interval" in md
    # the claim sample: every window of the held-out split, per-window sums on disk, intervals in the summary
    assert on_disk["precision"]["n_ce_tokens"] == on_disk["n_ce_positions"] and on_disk["precision"]["ce_layers"] == [0, 2]
    assert ev2["precision"]["n_ce_tokens"] == on_disk["n_ce_positions"] > ev2["n_ce_positions"]   # the curve's sample shrank, not the claims'
    assert (rd / "eval_windows.json").exists()
    s2 = load_json(rd / "summary.json")
    for k in ("ghat", "even", "small", "g1"):
        lo, hi = s2[f"{k}_delta_ce_ci95"]
        assert lo <= s2[f"{k}_delta_ce_mean"] <= hi

def test_missing_sae_names_train_stage(tmp_path):
    cfg, rd, plan = _study(tmp_path)
    import shutil
    shutil.rmtree(runs_dir("tiny", tmp_path) / "saes" / "L01-02")
    with pytest.raises(FileNotFoundError, match=r"1 SAE\(s\) missing.*L01-02.*groupsae train"):
        run_evaluation(cfg, tmp_path, progress=False)
