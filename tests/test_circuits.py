"""Circuit checks on the installed package: the task contract with and without a BOS tokenizer, attribution patching
against exact activation patching, the exactness of the splice (F = 1 with everything kept) on two families, the
discrimination check, and the stage end to end on a tiny study."""
import json
from types import SimpleNamespace
import numpy as np
import pytest, torch
import copy
from groupsae import circuits as ci, attribution as at, circuit_study as cs
from groupsae.config import get_preset, load_json, results_dir, runs_dir, save_json, savefig, figures_dir
from groupsae.evaluate import clean_pass
from groupsae.models import embedded_tokenizer, random_model, tiny_config
from groupsae.sae import TopKSAE

@pytest.fixture(scope="module")
def tok(): return embedded_tokenizer()

def with_bos(tok, bos="<|im_start|>"):
    "A copy of SmolLM2's tokenizer that adds a BOS before every text, as Gemma's and Llama's do."
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    raw = copy.deepcopy(tok._tokenizer)
    raw.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token=tok.eos_token)

@pytest.fixture(scope="module")
def btok(tok): return with_bos(tok)

def test_public_api():
    for mod, names in ((ci, ("TASKS", "make_task", "task_metric", "prefix_ids")),
                       (at, ("attribute", "exact_effects", "circuit_curves", "ERROR_MODES")),
                       (cs, ("run_circuits", "plot_circuits", "discrimination", "claim_variant", "untrained_arm"))):
        for name in names: assert name in mod.__all__, name
    assert {"ioi", "greater_than"} <= set(ci.TASKS) and any(t.startswith("agreement") for t in ci.TASKS)

def test_modules_stay_small():
    "The circuits stage is split so that no module passes about 300 lines (issue 29)."
    from pathlib import Path
    for mod in (ci, at, cs): assert len(Path(mod.__file__).read_text().splitlines()) <= 300, mod.__name__

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

@pytest.mark.parametrize("name", ci.TASKS)
def test_make_task_with_and_without_bos(tok, btok, name):
    "A tokenizer that adds a BOS (Gemma, Llama) gets it first; one that adds none (SmolLM2) gets <|endoftext|>; the prompts are the same after it."
    assert btok("a").input_ids == [1] + tok("a").input_ids and tok("a").input_ids[0] != tok.bos_token_id
    with_bos, without = ci.make_task(name, btok, 20, seed=2), ci.make_task(name, tok, 20, seed=2)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for a, b in zip(with_bos, without):
        assert a["clean"][0] == a["corrupt"][0] == 1 and b["clean"][0] == b["corrupt"][0] == eot
        assert eot not in a["clean"] and 1 not in b["clean"]
        assert (a["clean"][1:], a["corrupt"][1:], a["good"], a["bad"]) == (b["clean"][1:], b["corrupt"][1:], b["good"], b["bad"])

def test_prefix_ids_rule():
    class Tok:
        def __init__(self, bos=None, eos=None, vocab=(), adds=False): self.bos_token_id, self.eos_token_id, self.vocab, self.adds = bos, eos, dict(vocab), adds
        def __call__(self, text, add_special_tokens=True): return SimpleNamespace(input_ids=([self.bos_token_id] if self.adds and add_special_tokens else []) + [100])
        def get_vocab(self): return self.vocab
        def convert_tokens_to_ids(self, t): return self.vocab[t]
    assert ci.prefix_ids(Tok(bos=2, adds=True, vocab={"<|endoftext|>": 9})) == [2]     # the BOS it adds (Gemma), even beside <|endoftext|>
    assert ci.prefix_ids(Tok(bos=1, eos=2, vocab={"<|endoftext|>": 0})) == [0]          # a BOS it never adds (SmolLM2): <|endoftext|>
    assert ci.prefix_ids(Tok(bos=1, eos=2)) == [1] and ci.prefix_ids(Tok(eos=2)) == [2] and ci.prefix_ids(Tok()) == []

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
    ls = at.layer_saes(saes, {0: "G", 1: "G", 2: "L02"})
    return model, ls, ci.task_batch(ci.make_task(task, tok, n, 0)), ci.task_batch(ci.make_task(task, tok, n, 1))

@pytest.mark.parametrize("task", ["ioi", "greater_than"])
def test_attribution_matches_exact_patching(tok, task):
    torch.set_num_threads(1)
    model, ls, fit, _ = _setup("llama", tok, task)
    a = at.attribute(model, ls, fit, batch_size=7)
    # a sample of nodes: each layer's 4 top latents, 4 random latents that the corruption moves, and its error term
    g, nodes = torch.Generator().manual_seed(0), []
    f = {l: at.split_node(t, clean_pass(model, fit.corrupt).resid[l])[0] - at.split_node(t, clean_pass(model, fit.clean).resid[l])[0] for l, t in ls.items()}
    for l in ls:
        moved = (f[l].abs().sum((0, 1)) > 0).nonzero().squeeze(1)
        nodes += [(l, int(i)) for i in a.latents[l].mean(0).abs().topk(4).indices]
        nodes += [(l, int(i)) for i in moved[torch.randperm(len(moved), generator=g)[:4]]] + [(l, -1)]
    exact = at.exact_effects(model, ls, fit, nodes).numpy()
    approx = np.array([float(a.latents[l][:, i].mean() if i >= 0 else a.errors[l].mean()) for l, i in nodes])
    assert np.corrcoef(approx, exact)[0, 1] > 0.9
    big = np.abs(exact) > 0.1 * np.abs(exact).max()
    assert (np.sign(approx[big]) == np.sign(exact[big])).mean() >= 0.9

@pytest.mark.parametrize("arch", ["neox", "llama"])
def test_everything_kept_is_the_model(tok, arch):
    torch.set_num_threads(1)
    model, ls, fit, test = _setup(arch, tok)
    c = at.circuit_curves(model, ls, fit, test, [4, 50], [4], batch_size=8)
    for v in at.ERROR_MODES: assert c[v]["all_latents"] == pytest.approx(1.0, abs=0.01), v
    assert len(c["keep"]["completeness"]) == 1 and c["node"]["completeness"] == []
    means = at.node_means(model, ls, fit.clean)
    every = {l: torch.ones(256, dtype=torch.bool) for l in ls}
    torch.testing.assert_close(at.circuit_metric(model, ls, test, every, dict.fromkeys(ls, True), means), at.model_metric(model, test), atol=1e-4, rtol=0)
    # every node ablated is every residual stream at its per-position mean: the same m(∅) for any SAE set
    other = at.layer_saes({"A": TopKSAE(64, 128, 4, layers=[0, 1, 2], seed=7)}, {0: "A", 1: "A", 2: "A"})
    m_other = at.circuit_curves(model, other, fit, test, [4], errors="node", batch_size=8)["node"]["m_empty"]
    assert m_other == pytest.approx(c["node"]["m_empty"], abs=1e-4)
    assert c["error_share_metric"] == pytest.approx(at.faithfulness(c["keep"]["m_empty"], c["node"]["m_empty"], c["m_full"]))

def test_masks_and_sweep():
    s = {0: torch.tensor([0.1, -3.0, 2.0, 0.0]), 1: torch.tensor([1.0, 0.5, -0.2, 0.3])}
    keep, ke = at.circuit_masks(s, {0: 0.0, 1: 9.0}, 2)
    assert keep[0].tolist() == [False, True, True, False] and ke == {0: True, 1: True}
    keep, ke = at.circuit_masks(s, {0: 0.0, 1: 9.0}, 2, "node")
    assert keep[1].tolist() == [True, False, False, False] and ke == {0: False, 1: True}
    keep, ke = at.circuit_masks(s, {0: 0.0, 1: 9.0}, 2, "node", complement=True)
    assert keep[1].tolist() == [False, True, True, True] and ke == {0: True, 1: False}
    assert at.t_grid(2304, 16)[0] == 4 and at.t_grid(2304, 16)[-1] == 460 and len(at.t_grid(2304, 8)) == 8
    assert at.curve_auc([4, 8, 16], [1, 1, 1]) == pytest.approx(1.0) and at.faithfulness(3.0, 1.0, 5.0) == 0.5

def test_discrimination_rule():
    auc = lambda b, sd, u: {"baseline": {"mean": b, "sd": sd}, "untrained": {"mean": u, "sd": None}}
    assert cs.discrimination(auc(0.5, 0.02, 0.40))["passes"]                   # 0.10 below: beyond 0.05 and 2 sd
    assert not cs.discrimination(auc(0.5, 0.06, 0.40))["passes"]               # within 2 sd
    assert not cs.discrimination(auc(0.5, None, 0.46))["passes"]               # within 0.05
    assert not cs.discrimination(auc(0.18, 0.12, 0.41))["passes"]              # the worse SAE scores better (issue 29)
    good, bad = cs.discrimination(auc(0.5, 0.02, 0.1)), cs.discrimination(auc(0.2, 0.1, 0.6))
    assert cs.claim_variant({"keep": good, "node": good}) == ("keep", True) and cs.claim_variant({"keep": bad, "node": good}) == ("node", True)
    assert cs.claim_variant({"keep": bad, "node": cs.discrimination(auc(0.5, 0.1, 0.5))}) == ("node", False)

def _tiny_study(root, seeds=2):
    groups = {"layers": [0, 1, 2], "G_hat": 2, "partitions": {"1": [[0, 1, 2]], "2": [[0, 1], [2]], "3": [[0], [1], [2]]},
              "even_groups": {"2": [[0], [1, 2]]}}
    save_json(groups, results_dir("tiny", root) / "groups.json")
    arms = cs.circuit_arms(groups, 4, seeds)
    for i, name in enumerate(sorted({n for a in arms.values() for n in a.values()})):
        served = sorted({l for a in arms.values() for l, m in a.items() if m == name})
        TopKSAE(64, 256, 8, layers=served, scales=[1.0 + l for l in served], seed=i).save(runs_dir("tiny", root) / "saes" / name)

def test_run_circuits_end_to_end(tmp_path):
    _tiny_study(tmp_path)
    kw = dict(n=10, n_T=3, n_T_complete=2, seeds=2, progress=False)
    out = cs.run_circuits(get_preset("tiny"), tmp_path, **kw)
    rd = results_dir("tiny", tmp_path)
    first = (rd / "circuits.json").read_bytes()
    d, s = json.loads(first), load_json(rd / "summary.json")
    for k in ("baseline_faithfulness", "ghat_faithfulness", "g1_faithfulness", "untrained_faithfulness", "faithfulness_all_latents",
              "circuit_clean_accuracy", "circuit_error_share"):
        assert isinstance(s[k], float), k
    assert s["faithfulness_all_latents"] == pytest.approx(1.0, abs=0.01)
    assert s["circuit_variant"] in at.ERROR_MODES and isinstance(s["circuit_discriminates"], bool)
    assert s["untrained_faithfulness"] == d["auc"][s["circuit_variant"]]["untrained"]["mean"]
    assert s["baseline_faithfulness"] == d["auc"][s["circuit_variant"]]["baseline"]["mean"]
    assert set(s["circuit_discrimination"]) == set(at.ERROR_MODES) and d["variants"] == list(at.ERROR_MODES)
    assert d["arms"]["ghat"] == {"G": 2, "n_seeds": 2} and d["arms"]["g1"] == {"G": 1, "n_seeds": 1} and d["arms"]["untrained"] == {"G": 3, "n_seeds": 1}
    for v in at.ERROR_MODES:
        base = d["curves"][v]["ioi"]["baseline"]
        assert len(base["faithfulness"]) == 2 and len(base["faithfulness"][0]) == len(d["T"])
    assert set(d["shares"]["ioi"]["ghat"]) == {"error_share", "error_share_metric"} and len(d["shares"]["ioi"]["ghat"]["error_share_metric"]) == 2
    assert "seconds" not in d and "total" in load_json(rd / "timings.json")["circuits.json"]["seconds"]
    assert all(v["fit"] == 10 and v["test"] == 10 for v in d["n_examples"].values())
    assert len(first) < 100_000
    cs.run_circuits(get_preset("tiny"), tmp_path, **kw)
    assert (rd / "circuits.json").read_bytes() == first                          # same config and seed, same bytes
    a = savefig(cs.plot_circuits(d), "fig_circuits", "tiny", tmp_path).read_bytes()
    assert savefig(cs.plot_circuits(d), "fig_circuits", "tiny", tmp_path).read_bytes() == a

def test_plot_reads_the_earlier_layout(tmp_path):
    "A circuits.json written before issue 29 (one variant, no untrained SAE) still draws: the figures stage meets such files."
    _tiny_study(tmp_path, seeds=1)
    d = cs.run_circuits(get_preset("tiny"), tmp_path, n=8, n_T=2, n_T_complete=1, seeds=1, errors="keep", progress=False)
    assert d["variants"] == ["keep"] and d["circuit_variant"] == "keep" and "error_share_metric" not in d["shares"]["ioi"]["baseline"]
    old = {k: v for k, v in d.items() if k not in ("variants", "shares", "discrimination", "circuit_variant", "discriminates")}
    old |= {"errors": "keep", "auc": {a: x for a, x in d["auc"]["keep"].items() if a != "untrained"},
            "curves": {t: {a: {**r, "error_share": d["shares"][t][a]["error_share"]} for a, r in c.items() if a != "untrained"}
                       for t, c in d["curves"]["keep"].items()}}
    conv = cs.by_variant(old)
    assert conv["variants"] == ["keep"] and conv["shares"]["ioi"]["baseline"]["error_share"] == d["shares"]["ioi"]["baseline"]["error_share"]
    fig = cs.plot_circuits(old)
    assert len(fig.axes) == 2 * len(d["tasks"]) and len(fig.axes[0].get_lines()) == 4 + 2
    import matplotlib.pyplot as plt; plt.close(fig)

def test_run_circuits_needs_groups(tmp_path):
    with pytest.raises(FileNotFoundError, match="groups.json is missing"): cs.run_circuits(get_preset("tiny"), tmp_path, progress=False)
    _tiny_study(tmp_path, seeds=1)
    with pytest.raises(FileNotFoundError, match="SAE"): cs.run_circuits(get_preset("tiny"), tmp_path, seeds=3, progress=False)
    with pytest.raises(ValueError, match="use one of"): cs.run_circuits(get_preset("tiny"), tmp_path, seeds=1, errors="drop", progress=False)
