"""What 09d_probing cannot show: the module imported with no notebook state, the probe against a general optimiser
over parametrized shapes, invariances, the measures' sample of the embedded default (disjoint from the study's
tokens, split by play, every task balanced), and bad input refused before any model pass."""
import subprocess, sys
import numpy as np
import pytest
import torch

from groupsae.probing import auc, logistic_fit, probe, probe_tasks, sparse_probe, top_mean_diff, window_ids


def test_module_imports_without_notebook_state():
    code = "import groupsae.probing as p; print(p.sparse_probe.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sparse_probe"]


def _objective(x, y, w, b, C):
    z = x @ w + b
    return 0.5 * w @ w + C * (np.logaddexp(0, z) - y * z).sum()


@pytest.mark.parametrize("n,d,C", [(50, 1, 1.0), (300, 5, 1.0), (400, 20, 0.05), (100, 150, 1.0)])
def test_logistic_fit_is_the_minimum(n, d, C):
    from scipy.optimize import minimize
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 4, size=d)
    y = (x @ rng.normal(size=d) + rng.normal(size=n)) > 0
    w, b = logistic_fit(x, y, C)
    x1 = np.hstack([x, np.ones((n, 1))])
    f = lambda th: _objective(x, y.astype(float), th[:-1], th[-1], C)
    ref = minimize(f, np.zeros(d + 1), method="L-BFGS-B", options={"maxiter": 20_000, "ftol": 1e-15, "gtol": 1e-10}).fun
    assert _objective(x, y.astype(float), w, b, C) <= ref + 1e-6 * max(1.0, abs(ref))
    grad = np.r_[w, 0.0] + C * x1.T @ (1 / (1 + np.exp(-(x1 @ np.r_[w, b]))) - y)
    assert np.abs(grad).max() < 1e-4 * max(1.0, np.abs(x1).max() * n)       # a stationary point


def test_probe_invariances_and_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)); y = rng.random(300) < 0.5
    x[y, 3] += 1.0; x[y, 17] -= 0.8
    tr, te = slice(0, 150), slice(150, 300)
    r = probe(x[tr], y[tr], x[te], y[te], k=2)
    perm = rng.permutation(40)
    rp = probe(x[tr][:, perm], y[tr], x[te][:, perm], y[te], k=2)
    assert rp["accuracy"] == r["accuracy"] and sorted(perm[rp["features"]]) == sorted(r["features"]) == [3, 17]
    assert sparse_probe(torch.tensor(x[tr], dtype=torch.float64), torch.tensor(y[tr]), x[te], y[te], 2) == r["accuracy"]
    assert probe(x[tr], y[tr], x[te], y[te])["features"] == top_mean_diff(x[tr], y[tr], 40).tolist()   # k=None: all
    assert 0.5 < r["auc"] <= 1 and auc(-x[te][:, 3], y[te]) == pytest.approx(1 - auc(x[te][:, 3], y[te]))


def test_bad_input_is_refused():
    x, y = np.zeros((10, 4)), np.array([True, False] * 5)
    with pytest.raises(ValueError, match="y_train holds one class only"): sparse_probe(x, np.ones(10, bool), x, y, 1)
    with pytest.raises(ValueError, match="y_test holds one class only"): sparse_probe(x, y, x, np.zeros(10, bool), 1)
    with pytest.raises(ValueError, match=r"k=5 must be in 1..4 \(the number of features, d_sae"): sparse_probe(x, y, x, y, 5)
    with pytest.raises(ValueError, match="k=0"): sparse_probe(x, y, x, y, 0)
    with pytest.raises(ValueError, match="x_train has 4 features, x_test 3"): sparse_probe(x, y, x[:, :3], y, 1)
    with pytest.raises(ValueError, match="window"): window_ids(2, 4, 8)


def test_interp_config_checks_the_measures_fields():
    from groupsae.config import ConfigError, InterpConfig, get_preset
    with pytest.raises(ConfigError, match="interp.probe_ks"): InterpConfig(probe_ks=[1, 2])
    with pytest.raises(ConfigError, match="interp.measure_tokens"): InterpConfig(measure_tokens=0)
    with pytest.raises(ConfigError, match="interp.measure_layers"): InterpConfig(measure_layers=[-3])
    assert not get_preset("smollm2-cpu").interp.llm and get_preset("pythia-160m").interp.llm   # judge only with an endpoint


def test_measure_sample_of_the_embedded_default():
    from groupsae.config import get_preset
    from groupsae.data import GENRES, play_files, plays_used, windows_needed
    from groupsae.interp_measures import measure_sample
    from groupsae.models import embedded_tokenizer
    tok, cfg = embedded_tokenizer(), get_preset("smollm2-cpu")
    ms = measure_sample(cfg, tok, {tok.bos_token_id, tok.eos_token_id})
    d = cfg.data
    used = play_files()[:plays_used(tok, (windows_needed(d.n_train_tokens, d.context_len) + windows_needed(d.n_eval_tokens, d.context_len)) * (d.context_len - 1))]
    sample_plays = set(ms.plays["train"]) | set(ms.plays["test"])
    assert used and not {p.name for p in used} & sample_plays                 # none of the SAEs' tokens
    assert not set(ms.plays["train"]) & set(ms.plays["test"])                 # play-disjoint split
    assert ms.ids.shape == (windows_needed(cfg.interp.measure_tokens, d.context_len), d.context_len)
    assert [t.name for t in ms.tasks] == ["speaker", "stage_direction", "line_start"] + [f"genre:{g}" for g in GENRES]
    for t in ms.tasks:
        assert t.y_train.float().mean() == 0.5 and t.y_test.float().mean() == 0.5 and len(t.test) >= 20
    assert not ms.keep[:, 0].any()                                            # BOS never counts


def _tiny_study(root, **changes):
    from groupsae.config import get_preset, override, results_dir, runs_dir, save_json
    from groupsae.sae import TopKSAE
    from groupsae.study import group_name
    (root / "settings.ini").touch()
    cfg = override(get_preset("tiny"), **({"interp.llm": False, "interp.measure_tokens": 4096, "interp.n_pattern_latents": 10} | changes))
    parts = {3: [[0], [1], [2]], 2: [[0, 1], [2]], 1: [[0, 1, 2]]}
    save_json({"layers": [0, 1, 2], "partitions": {str(G): gs for G, gs in parts.items()},
               "amad": {"3": 0.0, "2": 0.12, "1": 0.3}, "G_hat": 2}, results_dir("tiny", root) / "groups.json")
    torch.manual_seed(0)
    for gs in parts.values():
        for g in gs: TopKSAE(64, 32, 8, layers=g, scales=[1.0] * len(g)).save(runs_dir("tiny", root) / "saes" / group_name(g))
    return cfg


@pytest.mark.parametrize("changes,match", [({"interp.probe_ks": [1, 5, 40]}, "k > d_sae"),
                                           ({"interp.measure_tokens": 200}, "raise interp.measure_tokens")])
def test_bad_study_input_fails_before_any_model_pass(tmp_path, monkeypatch, changes, match):
    import groupsae.activations as act
    from groupsae.interp_study import run_interp
    torch.set_num_threads(1)
    cfg = _tiny_study(tmp_path, **changes)
    def no_pass(*a, **k): raise AssertionError("the model ran before the input was checked")
    monkeypatch.setattr(act, "residual_streams", no_pass)
    with pytest.raises(ValueError, match=match): run_interp(cfg, tmp_path, log=None)
