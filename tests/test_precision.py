"""The claims' 95% intervals: Student's t against SciPy, and the saved per-window losses reproducing eval.json's intervals."""
import json
from pathlib import Path
import numpy as np
import pytest
from groupsae.config import get_preset, load_json, repo_root
from groupsae.eval_report import eval_plan
from groupsae.evaluate import read_eval_windows
from groupsae.precision import claim_arms, claim_precision, t975

def test_t975_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 61), 100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df
    assert t975(None) == pytest.approx(stats.norm.ppf(0.975), abs=1e-9)

def _recompute(res:Path, cfg):
    "eval.json's precision section, and the same intervals recomputed from eval_windows.json alone."
    ev, groups = load_json(res / "eval.json"), load_json(res / "groups.json")
    p = ev["precision"]
    arms = claim_arms(eval_plan(groups, ev["n_layers"], cfg.train.seeds), len(ev["layers"]), ev["G_hat"])
    win = read_eval_windows(res / "eval_windows.json")
    win["fvu"] = {}   # FVU's per-window sums are not saved: only ΔCE and KL can be recomputed
    again = claim_precision(win, arms, p["ce_layers"], p["fvu_layers"], p["n_boot"], cfg.seed, metrics=("delta_ce", "kl"))
    return p, again

def _check(p, again, rel):
    assert again["n_ce_tokens"] == p["n_ce_tokens"]
    for key, d in again["diffs"].items():
        for m in ("delta_ce", "kl"):
            assert d[m]["mean"] == pytest.approx(p["diffs"][key][m]["mean"], rel=rel, abs=1e-6), (key, m)
            assert d[m]["ci95"] == pytest.approx(p["diffs"][key][m]["ci95"], rel=rel, abs=1e-5), (key, m)
            assert d[m]["verdict"] == p["diffs"][key][m]["verdict"]

def test_tiny_study_windows_reproduce_intervals(tiny_study):
    res = tiny_study.root / "results" / "tiny"
    p, again = _recompute(res, get_preset("tiny"))
    _check(p, again, rel=2e-3)                       # eval.json keeps 4 significant figures
    s = load_json(res / "summary.json")
    for key in ("n_ce_tokens", "ghat_delta_ce_ci95", "ghat_delta_fvu_ci95", "even_delta_ce_ci95"): assert key in s, key
    for key in ("ghat", "even", "small"):
        for m in ("fvu", "ce", "kl"):
            lo, hi = s[f"{key}_delta_{m}_ci95"]
            assert lo <= s[f"{key}_delta_{m}_mean"] <= hi

def test_embedded_default_windows_reproduce_intervals():
    res = repo_root() / "results" / "smollm2-cpu"
    p, again = _recompute(res, get_preset("smollm2-cpu"))
    _check(p, again, rel=2e-3)                       # eval.json keeps 4 significant figures, the saved sums 7
    s = load_json(res / "summary.json")
    assert s["n_ce_tokens"] >= 8192 and s["n_ce_tokens"] == p["n_ce_tokens"]
    assert s["ghat_delta_ce_ci95"] == pytest.approx(p["diffs"]["ghat"]["delta_ce"]["ci95"], rel=1e-3)
    ev = load_json(res / "eval.json")   # every arm's ΔCE key is this evaluation's (seed 0's curve: the replicas are not on it)
    for arm, (kind, G) in {"baseline": ("amad", ev["baseline_G"]), "ghat": ("amad", ev["G_hat"]), "even": ("even", ev["G_hat"])}.items():
        assert s[f"{arm}_delta_ce"] == pytest.approx(ev["settings"][kind][str(G)]["mean"]["delta_ce"], rel=1e-3), arm
