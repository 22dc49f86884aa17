"""Feature-similarity checks on the installed package: metrics against naive loops, and the stage end to end on 'tiny'."""
import json
import pytest, torch
import torch.nn.functional as F
from groupsae.config import get_preset, load_json, results_dir, runs_dir, save_json, savefig, figures_dir
from groupsae.sae import TopKSAE
from groupsae.activations import run_activations, load_scales
from groupsae import similarity as sm
from groupsae.figures import draw

def test_public_api_importable():
    for name in ("mmcs", "max_cos", "firing_matrix", "max_jaccard", "mmco", "feature_spread", "spread_summary",
                 "plot_spread", "plot_similarity", "plot_similarity_grid", "similarity_figures", "encode_codes", "compare_group",
                 "run_similarity"):
        assert name in sm.__all__

def _mmcs_naive(Wa, Wb):
    return sum(max(float(a @ b / (a.norm() * b.norm())) for b in Wb) for a in Wa) / len(Wa)

def _mmco_naive(ia, ib):
    sets = lambda idx: [{t for t in range(len(idx)) if l in idx[t].tolist()} for l in idx.unique().tolist()]
    A, B = sets(ia), sets(ib)
    return sum(max(len(a & b) / len(a | b) for b in B) for a in A) / len(A)

@pytest.mark.parametrize("na,nb,d,chunk", [(1, 1, 3, 1), (33, 17, 8, 5), (20, 64, 4, 4096)])
def test_mmcs_matches_naive(na, nb, d, chunk):
    g = torch.Generator().manual_seed(na)
    Wa, Wb = torch.randn(na, d, generator=g) * 3, torch.randn(nb, d, generator=g)
    assert sm.mmcs(Wa, Wb, chunk) == pytest.approx(_mmcs_naive(Wa, Wb), abs=1e-5)
    assert sm.mmcs(Wa, Wa, chunk) == pytest.approx(1.0, abs=1e-6)

@pytest.mark.parametrize("n,da,db,k,chunk", [(25, 10, 12, 3, 4), (40, 30, 7, 2, 2048), (5, 6, 6, 6, 1)])
def test_mmco_matches_naive(n, da, db, k, chunk):
    g = torch.Generator().manual_seed(n)
    ia = torch.stack([torch.randperm(da, generator=g)[:k] for _ in range(n)])
    ib = torch.stack([torch.randperm(db, generator=g)[:min(k, db)] for _ in range(n)])
    r = sm.mmco(ia, ib, da, db, chunk=chunk)
    assert r["mmco"] == pytest.approx(_mmco_naive(ia, ib), abs=1e-6)
    assert r["n_alive_a"] + r["n_dead_a"] == da and r["n_alive_a"] == len(ia.unique())
    assert sm.mmco(ia, ia, da, da, chunk=chunk)["mmco"] == 1.0

def test_zero_activations_do_not_fire():
    idx, acts = torch.tensor([[0, 1], [0, 2]]), torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    r = sm.mmco(idx, idx, 3, 3, acts, acts)
    assert (r["n_alive_a"], r["n_dead_a"], r["mmco"]) == (1, 2, 1.0)
    assert sm.feature_spread([idx, idx], 3, [acts, acts]).tolist() == [[2, 2], [0, 0], [0, 0]]

GROUPS = {"layers": [0, 1, 2], "G_hat": 2, "partitions": {"1": [[0, 1, 2]], "2": [[0], [1, 2]], "3": [[0], [1], [2]]},
          "amad": {"1": 0.3, "2": 0.1, "3": 0.0}, "threshold": 0.2}

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    "Scales from the real stage, a hand-made groups.json and tiny saved SAEs: L01-02 is L01's weights serving layers 1 and 2."
    root = tmp_path_factory.mktemp("sim")
    cfg = get_preset("tiny")
    run_activations(cfg, root)
    scales = load_scales("tiny", root)
    save_json(GROUPS, results_dir("tiny", root) / "groups.json")
    d = runs_dir("tiny", root) / "saes"
    saes = {}
    for l in range(4):
        saes[l] = TopKSAE(64, 256, 8, layers=[l], scales=[scales[l]], seed=l)
        with torch.no_grad(): saes[l].b_enc.fill_(0.05)
        saes[l].save(d / f"L{l:02d}")
    grp = TopKSAE(64, 256, 8, layers=[1, 2], scales=[scales[1], scales[2]])
    grp.load_state_dict(saes[1].state_dict()); grp.save(d / "L01-02")
    TopKSAE(64, 256, 8, layers=[0, 1, 2], scales=[scales[l] for l in range(3)], seed=9).save(d / "L00-02")
    return cfg, root

def test_run_similarity_end_to_end(tiny_study):
    cfg, root = tiny_study
    out = sm.run_similarity(cfg, root, n_tokens=400, max_latents=50, log=None)
    sim = load_json(results_dir("tiny", root) / "similarity.json")
    assert sim["G_hat"] == 2 and sim["layers"] == [1, 2] and sim["n_tokens"] == 400 and sim["config_hash"] == cfg.hash()
    assert sorted(sim["mmcs"]) == ["1", "2"]                       # the singleton group [0] is skipped
    assert sim["mmcs"]["1"] == pytest.approx(1.0, abs=1e-4)        # same decoder as the baseline of layer 1
    assert sim["mmco"]["1"] == pytest.approx(1.0, abs=1e-4)        # same encoder on the same tokens: same firing
    assert sim["mmcs"]["2"] < 0.9 and 0 <= sim["mmco"]["2"] < 1
    assert sim["n_alive"]["1"] + sim["n_dead"]["1"] == 256
    sp = sim["spread"]["L01-02"]
    assert sp["layers"] == [1, 2] and len(sp["counts"]) == len(sp["latents"]) == min(50, sp["n_alive"])
    assert sum(sp["layers_fired_hist"]) == sp["n_alive"] and all(sum(r) > 0 for r in sp["counts"])
    assert all(max(r) <= 400 for r in sp["counts"])
    assert out["mmcs"][1] == pytest.approx(sim["mmcs"]["1"], rel=1e-3)
    assert len(json.dumps(sim)) < 50_000
    assert sim["Gs"] == [1, 2, 3] and sim["skipped_G"] == []
    assert sim["per_G"]["mmcs"]["2"] == sim["mmcs"] and sorted(sim["per_G"]["mmco"]["1"]) == ["0", "1", "2"]
    assert sim["per_G"]["mmcs"]["3"] == {} and sorted(sim["spread_all"]) == ["L00-02", "L01-02"]
    draw("tiny", "similarity.json", root)                          # the stage runner draws from the saved file
    figs = figures_dir("tiny", root)
    for name in ("fig8_mmcs", "fig8_mmco", "fig8_spread"):
        png = (figs / f"{name}.png").read_bytes()
        again = savefig(sm.similarity_figures(sim)[name], name + "_again", "tiny", root)   # redrawn from the JSON alone
        assert again.read_bytes() == png

def test_run_similarity_chosen_gs_and_scale_check(tiny_study):
    cfg, root = tiny_study
    d = runs_dir("tiny", root) / "saes"
    out = sm.run_similarity(cfg, root, n_tokens=64, Gs=[2], log=None)
    assert out["Gs"] == [2] and list(out["per_G"]["mmcs"]) == [2] and out["n_tokens"] == 64
    cfg_json = json.loads((d / "L01-02" / "cfg.json").read_text())
    bad = dict(cfg_json, scales=[s * 2 for s in cfg_json["scales"]])
    (d / "L01-02" / "cfg.json").write_text(json.dumps(bad))
    try:
        with pytest.raises(ValueError, match="scale"): sm.run_similarity(cfg, root, n_tokens=64, Gs=[2], log=None)
    finally: (d / "L01-02" / "cfg.json").write_text(json.dumps(cfg_json))

def test_run_similarity_missing_sae(tiny_study, tmp_path):
    cfg, root = tiny_study
    groups = dict(GROUPS, G_hat=1)                                   # needs L00-02, never trained
    save_json(groups, results_dir("tiny", tmp_path) / "groups.json")
    (runs_dir("tiny", tmp_path) / "saes").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="L00-02.*train"): sm.run_similarity(cfg, tmp_path, log=None)

def test_run_similarity_all_singletons(tmp_path):
    "At G = L every SAE is a baseline: nothing to compare, but the stage and its figures still finish."
    cfg = get_preset("tiny")
    save_json(dict(GROUPS, G_hat=3), results_dir("tiny", tmp_path) / "groups.json")
    out = sm.run_similarity(cfg, tmp_path, log=None)
    assert out["mmcs"] == {} and out["spread"] == {} and out["layers"] == []
    draw("tiny", "similarity.json", tmp_path)
    assert (figures_dir("tiny", tmp_path) / "fig8_spread.png").exists()
