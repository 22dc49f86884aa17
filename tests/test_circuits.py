"""Circuit checks on the installed package: the task contract, attribution patching against exact activation patching,
the exactness of the splice (F = 1 with everything kept) on two families, and the stage end to end on a tiny study."""
import json
from types import SimpleNamespace
import numpy as np
import pytest, torch
from groupsae import circuits as ci
from groupsae.config import get_preset, load_json, results_dir, runs_dir, save_json, savefig, figures_dir
from groupsae.evaluate import clean_pass
from groupsae.models import embedded_tokenizer, random_model, tiny_config
from groupsae.sae import TopKSAE

@pytest.fixture(scope="module")
def tok(): return embedded_tokenizer()

def test_public_api():
    for name in ("TASKS", "make_task", "task_metric", "attribute", "exact_effects", "circuit_curves", "run_circuits", "plot_circuits"):
        assert name in ci.__all__
    assert {"ioi", "greater_than"} <= set(ci.TASKS) and any(t.startswith("agreement") for t in ci.TASKS)

@pytest.mark.parametrize("name", ci.TASKS)
@pytest.mark.parametrize("n", [1, 37])
def test_make_task_contract(tok, name, n):
    ex = ci.make_task(name, tok, n, seed=5)
    assert len(ex) == n
    for e in ex:
        assert len(e["clean"]) == len(e["corrupt"]) and e["clean"] != e["corrupt"]
        assert e["clean"][0] == tok.convert_tokens_to_ids("<|endoftext|>")       # SmolLM2 adds no BOS: the prefix does
        assert e.good == e["good"] and e["good"] and e["bad"] and not set(e["good"]) & set(e["bad"])
        assert all(isinstance(i, int) for i in e["clean"] + e["corrupt"] + e["good"] + e["bad"])
    assert len({len(e["clean"]) for e in ex}) == 1
    assert ci.make_task(name, tok, n, seed=5) == ex and (n == 1 or ci.make_task(name, tok, n, seed=6) != ex)

def test_prefix_only_without_bos():
    class WithBos:   # a tokenizer that adds its BOS itself gets no prefix
        bos_token_id, eos_token_id = 7, 8
        def __call__(self, text, add_special_tokens=True): return SimpleNamespace(input_ids=[7, 100] if add_special_tokens else [100])
    assert ci.prefix_ids(WithBos()) == []

def test_greater_than_answers(tok):
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    for e in ci.make_task("greater_than", tok, 50, seed=0):
        x = digits.index(e["clean"][-8])        # "... year _ 1 7 X Y to the year _ 1 7": the start year's tens digit
        assert e["good"] == digits[x + 1:] and e["bad"] == digits[:x]
        assert [tok.decode([i]) for i in e["corrupt"][-8:-6]] == ["0", "1"]   # Hanna et al.'s "01" start year

def test_metric_matches_loop(tok):
    ex = ci.make_task("agreement_pp", tok, 9, seed=1)
    b = ci.task_batch(ex)
    logits = torch.randn(9, len(tok), generator=torch.Generator().manual_seed(3))
    lp = logits.log_softmax(-1)
    ref = torch.stack([lp[i, e["good"]].logsumexp(0) - lp[i, e["bad"]].logsumexp(0) for i, e in enumerate(ex)])
    torch.testing.assert_close(ci.task_metric(logits, b.good, b.bad), ref, atol=1e-5, rtol=0)

def _setup(arch, tok, task="ioi", n=16):
    model = random_model(tiny_config(arch, n_layers=4, d_model=64))
    saes = {"G": TopKSAE(64, 256, 8, layers=[0, 1], scales=[0.5, 2.0], seed=0), "L02": TopKSAE(64, 256, 8, layers=[2], scales=[3.0], seed=1)}
    ls = ci.layer_saes(saes, {0: "G", 1: "G", 2: "L02"})
    return model, ls, ci.task_batch(ci.make_task(task, tok, n, 0)), ci.task_batch(ci.make_task(task, tok, n, 1))

@pytest.mark.parametrize("task", ["ioi", "greater_than"])
def test_attribution_matches_exact_patching(tok, task):
    torch.set_num_threads(1)
    model, ls, fit, _ = _setup("llama", tok, task)
    a = ci.attribute(model, ls, fit, batch_size=7)
    # a sample of nodes: each layer's 4 top latents, 4 random latents that the corruption moves, and its error term
    g, nodes = torch.Generator().manual_seed(0), []
    f = {l: ci.split_node(t, clean_pass(model, fit.corrupt).resid[l])[0] - ci.split_node(t, clean_pass(model, fit.clean).resid[l])[0] for l, t in ls.items()}
    for l in ls:
        moved = (f[l].abs().sum((0, 1)) > 0).nonzero().squeeze(1)
        nodes += [(l, int(i)) for i in a.latents[l].mean(0).abs().topk(4).indices]
        nodes += [(l, int(i)) for i in moved[torch.randperm(len(moved), generator=g)[:4]]] + [(l, -1)]
    exact = ci.exact_effects(model, ls, fit, nodes).numpy()
    approx = np.array([float(a.latents[l][:, i].mean() if i >= 0 else a.errors[l].mean()) for l, i in nodes])
    assert np.corrcoef(approx, exact)[0, 1] > 0.9
    big = np.abs(exact) > 0.1 * np.abs(exact).max()
    assert (np.sign(approx[big]) == np.sign(exact[big])).mean() >= 0.9

@pytest.mark.parametrize("arch", ["neox", "llama"])
@pytest.mark.parametrize("errors", ci.ERROR_MODES)
def test_everything_kept_is_the_model(tok, arch, errors):
    torch.set_num_threads(1)
    model, ls, fit, test = _setup(arch, tok)
    c = ci.circuit_curves(model, ls, fit, test, [4, 50], [4], errors=errors, batch_size=8)
    assert c["all_latents"] == pytest.approx(1.0, abs=0.01)
    means = ci.node_means(model, ls, fit.clean)
    every = {l: torch.ones(256, dtype=torch.bool) for l in ls}
    torch.testing.assert_close(ci.circuit_metric(model, ls, test, every, dict.fromkeys(ls, True), means), ci.model_metric(model, test), atol=1e-4, rtol=0)

def test_masks_and_sweep():
    s = {0: torch.tensor([0.1, -3.0, 2.0, 0.0]), 1: torch.tensor([1.0, 0.5, -0.2, 0.3])}
    keep, ke = ci.circuit_masks(s, {0: 0.0, 1: 9.0}, 2)
    assert keep[0].tolist() == [False, True, True, False] and ke == {0: True, 1: True}
    keep, ke = ci.circuit_masks(s, {0: 0.0, 1: 9.0}, 2, "node")
    assert keep[1].tolist() == [True, False, False, False] and ke == {0: False, 1: True}
    keep, ke = ci.circuit_masks(s, {0: 0.0, 1: 9.0}, 2, "node", complement=True)
    assert keep[1].tolist() == [False, True, True, True] and ke == {0: True, 1: False}
    assert ci.t_grid(2304, 16)[0] == 4 and ci.t_grid(2304, 16)[-1] == 460 and len(ci.t_grid(2304, 8)) == 8
    assert ci.curve_auc([4, 8, 16], [1, 1, 1]) == pytest.approx(1.0) and ci.faithfulness(3.0, 1.0, 5.0) == 0.5

def _tiny_study(root, seeds=2):
    groups = {"layers": [0, 1, 2], "G_hat": 2, "partitions": {"1": [[0, 1, 2]], "2": [[0, 1], [2]], "3": [[0], [1], [2]]},
              "even_groups": {"2": [[0], [1, 2]]}}
    save_json(groups, results_dir("tiny", root) / "groups.json")
    arms = ci.circuit_arms(groups, 4, seeds)
    for i, name in enumerate(sorted({n for a in arms.values() for n in a.values()})):
        served = sorted({l for a in arms.values() for l, m in a.items() if m == name})
        TopKSAE(64, 256, 8, layers=served, scales=[1.0 + l for l in served], seed=i).save(runs_dir("tiny", root) / "saes" / name)

def test_run_circuits_end_to_end(tmp_path):
    _tiny_study(tmp_path)
    kw = dict(n=10, n_T=3, n_T_complete=2, seeds=2, progress=False)
    out = ci.run_circuits(get_preset("tiny"), tmp_path, **kw)
    rd = results_dir("tiny", tmp_path)
    first = (rd / "circuits.json").read_bytes()
    d, s = json.loads(first), load_json(rd / "summary.json")
    for k in ("baseline_faithfulness", "ghat_faithfulness", "g1_faithfulness", "faithfulness_all_latents", "circuit_clean_accuracy"):
        assert isinstance(s[k], float), k
    assert s["faithfulness_all_latents"] == pytest.approx(1.0, abs=0.01)
    assert d["arms"]["ghat"] == {"G": 2, "n_seeds": 2} and d["arms"]["g1"] == {"G": 1, "n_seeds": 1}
    assert len(d["curves"]["ioi"]["baseline"]["faithfulness"]) == 2 and len(d["curves"]["ioi"]["baseline"]["faithfulness"][0]) == len(d["T"])
    assert "seconds" not in d and "total" in load_json(rd / "timings.json")["circuits.json"]["seconds"]
    assert all(v["fit"] == 10 and v["test"] == 10 for v in d["n_examples"].values())
    assert len(first) < 100_000
    ci.run_circuits(get_preset("tiny"), tmp_path, **kw)
    assert (rd / "circuits.json").read_bytes() == first                          # same config and seed, same bytes
    a = savefig(ci.plot_circuits(d), "fig_circuits", "tiny", tmp_path).read_bytes()
    assert savefig(ci.plot_circuits(d), "fig_circuits", "tiny", tmp_path).read_bytes() == a

def test_run_circuits_needs_groups(tmp_path):
    with pytest.raises(FileNotFoundError, match="groups.json is missing"): ci.run_circuits(get_preset("tiny"), tmp_path, progress=False)
    _tiny_study(tmp_path, seeds=1)
    with pytest.raises(FileNotFoundError, match="SAE"): ci.run_circuits(get_preset("tiny"), tmp_path, seeds=3, progress=False)
