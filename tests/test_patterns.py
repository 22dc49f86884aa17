"""What 09c_patterns cannot show: the module imported with no notebook state, the fast indexed path against
position-by-position predictions over parametrized shapes, the planted-latent calibration over seeds on the
embedded corpus, and bad input."""
import subprocess, sys
import pytest
import torch

from groupsae.patterns import (MAX_ID, calibrate_patterns, explain, explain_index, firings, pattern_index, pattern_keys,
                               pattern_shapes, prf, score, score_latents)


def test_module_imports_without_notebook_state():
    code = "import groupsae.patterns as p; print(p.explain.__name__, p.score.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["explain", "score"]


def _matches(ids, shapes, keys_by_shape):
    "Reference predictions: position by position, does any kept pattern end here?"
    out = torch.zeros(ids.shape, dtype=torch.bool)
    for c in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            for s, offs in enumerate(shapes):
                if t + min(offs) < 0: continue
                k = 0
                for o in offs: k = k * MAX_ID + int(ids[c, t + o])
                if k in set(keys_by_shape[s].tolist()): out[c, t] = True
    return out


@pytest.mark.parametrize("max_len", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 17), (8, 5), (1, 40)])
def test_predictions_fast_equal_reference(max_len, shape):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(max_len * 100 + shape[0])
    ids = torch.randint(0, 6, shape, generator=g)             # a small vocabulary: patterns repeat
    acts = torch.rand(shape, generator=g) * (ids == 2) + (torch.rand(shape, generator=g) < 0.1)
    keep = torch.rand(shape, generator=g) > 0.1
    e = explain(ids, acts, keep, max_len=max_len)
    assert e.shapes == pattern_shapes(max_len)
    pred = e.predict(ids)
    assert pred.dtype == torch.bool and pred.shape == ids.shape
    assert torch.equal(pred, _matches(ids, e.shapes, e.keys))
    assert torch.equal(e.predict_index(pattern_index(ids, keep, max_len)), pred[keep])
    m = score(e, ids, acts, keep)
    tp = int((pred & (acts > 0) & keep).sum())
    assert m["n_pred"] == int((pred & keep).sum()) and m["n_fire"] == int(((acts > 0) & keep).sum())
    if m["n_pred"]: assert m["precision"] == pytest.approx(tp / m["n_pred"])


def test_exact_token_latents_are_explained_perfectly():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (20, 30), generator=g)
    for tokens in ([7], [3, 11, 29]):
        acts = torch.isin(ids, torch.tensor(tokens)).float() * 2.5
        e = explain(ids[:10], acts[:10])
        assert sorted(int(k) for k in e.keys[0]) == tokens and sum(len(k) for k in e.keys[1:]) == 0   # only the tokens
        assert score(e, ids[10:], acts[10:]) | {} == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                                       "n_fire": int((acts[10:] > 0).sum()), "n_pred": int((acts[10:] > 0).sum())}


def test_silent_latent_and_undefined_scores():
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    e = explain(ids, torch.zeros(4, 16))
    assert e.n_patterns == 0 and e.threshold == float("inf") and not e.predict(ids).any()
    m = score(e, ids, torch.zeros(4, 16))
    assert m["recall"] is None and m["f1"] is None and m["precision"] == 0.0
    assert prf(torch.tensor([True, False]), torch.tensor([False, True]))["f1"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_latents_meet_their_targets_on_the_corpus(seed):
    from groupsae.data import labelled_windows
    from groupsae.models import embedded_tokenizer
    torch.set_num_threads(1)
    lw = labelled_windows(embedded_tokenizer(), 64, 128, skip_plays=4, seed=seed)
    train = torch.arange(64) % 2 == 0
    cal = calibrate_patterns(lw.ids, lw.role >= 0, train, seed=seed)
    assert cal["one_token"]["f1"] >= 0.95
    assert cal["after_token"]["f1"] >= 0.9 and cal["after_token"]["two_token_pattern"]
    assert cal["random"]["p_value"] >= 0.01 and cal["random"]["f1"] < 10 * cal["random"]["density"]   # no better than chance
    assert all(cal["passed"].values())


def test_score_latents_skips_and_counts():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 30, (40, 20), generator=g)
    top_idx = ids.flatten()[:, None].clone()
    top_acts = torch.ones_like(top_idx, dtype=torch.float)
    half = 20 * 20
    it, ie = pattern_index(ids[:20]), pattern_index(ids[20:])
    ftr, fte = firings(top_acts[:half], top_idx[:half], 64), firings(top_acts[half:], top_idx[half:], 64)
    n_fired = int(((ftr.counts + fte.counts) > 0).sum())
    recs, skipped = score_latents(it, ie, ftr, fte, n_latents=1000, min_count=15, min_test=1)
    assert len(recs) + skipped["train"] + skipped["test"] == n_fired       # every firing latent scored or counted
    assert all(r["n_train"] >= 15 for r in recs) and skipped["train"] == int(((ftr.counts + fte.counts > 0) & (ftr.counts < 15)).sum())
    assert all(r["f1"] == 1.0 for r in recs)


def test_bad_input_is_refused_with_the_fix():
    ids = torch.randint(0, 10, (2, 8))
    with pytest.raises(ValueError, match="max_len in 1..3"): explain(ids, torch.ones(2, 8), max_len=4)
    with pytest.raises(ValueError, match="one activation per token"): explain(ids, torch.ones(2, 7))
    with pytest.raises(ValueError, match="must lie in 0"): pattern_keys(torch.tensor([[MAX_ID]]), pattern_shapes(2))
    with pytest.raises(ValueError, match="2-d tensor"): pattern_keys(torch.tensor([1, 2]), pattern_shapes(2))
    with pytest.raises(ValueError, match="one activation per token"):
        score(explain(ids, torch.ones(2, 8)), ids, torch.ones(3, 8))
