"""Round trips of our exports through the real sparsify and SAELens loaders, on several shapes and scales."""
import pytest, torch
from groupsae.sae import TopKSAE
from groupsae.export import to_sparsify, to_saelens

def _sae(d_model, d_sae, k, layers, scales):
    sae = TopKSAE(d_model, d_sae, k, layers=layers, scales=scales, seed=0)
    with torch.no_grad(): sae.b_dec.normal_(); sae.b_enc.normal_(0, 0.1)
    return sae

@pytest.mark.parametrize("d_model,d_sae,k,scales", [(16, 64, 4, [0.5, 0.1]), (32, 256, 16, [0.01, 2.0])])
def test_sparsify_round_trip(tmp_path, d_model, d_sae, k, scales):
    from sparsify import SparseCoder
    sae = _sae(d_model, d_sae, k, [0, 7], scales)
    to_sparsify(sae, tmp_path)
    loaded = SparseCoder.load_many(str(tmp_path), local=True)
    for l, s in zip([0, 7], scales):
        sc = SparseCoder.load_from_disk(tmp_path / f"layers.{l}")
        raw = torch.randn(64, d_model) / s
        ours, theirs = sae.encode(raw * s), sc.encode(raw)
        assert torch.equal(ours.top_idx.sort(-1).values, theirs.top_indices.sort(-1).values)
        torch.testing.assert_close(loaded[f"layers.{l}"].decode(theirs.top_acts, theirs.top_indices),
                                   sae.decode(*ours).detach() / s, rtol=1e-4, atol=1e-4)

def test_saelens_round_trip(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _sae(16, 64, 4, [3], [0.125])
    loaded = sae_lens.SAE.load_from_disk(str(to_saelens(sae, tmp_path, layer=3)), device="cpu")
    raw = torch.randn(32, 16) * 8
    with torch.no_grad():
        torch.testing.assert_close(loaded(raw), sae.decode(*sae.encode(raw * 0.125)) / 0.125, rtol=1e-4, atol=1e-4)
        z = loaded.encode(raw)
        ours = sae.encode(raw * 0.125)
        dense = torch.zeros_like(z).scatter(-1, ours.top_idx, ours.top_acts)
        torch.testing.assert_close(z, dense, rtol=1e-4, atol=1e-4)

# ---- an SAE without layers, and other people's SAEs read back (sparsify, SAELens), through the real packages ----
import json, shutil
from pathlib import Path
from groupsae.export import ExternalSAEError, evaluate_external, from_saelens, from_sparsify, load_external, read_sae

def test_sae_without_layers_exports_at_unit_scale(tmp_path):
    from sparsify import SparseCoder
    sae = TopKSAE(64, 512, 8, seed=3)
    to_sparsify(sae, tmp_path, layers=[3, 4])
    loaded = SparseCoder.load_many(str(tmp_path), local=True)
    assert sorted(loaded) == ["layers.3", "layers.4"]
    raw = torch.randn(50, 64)
    ours = sae.encode(raw)
    for sc in loaded.values():
        theirs = sc.encode(raw)
        assert torch.equal(theirs.top_indices.sort(-1).values, ours.top_idx.sort(-1).values)
        torch.testing.assert_close(sc.decode(theirs.top_acts, theirs.top_indices), sae.decode(*ours).detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"pass layers=\[\.\.\.\]"): to_sparsify(sae, tmp_path / "again")

def _same_sae(a:TopKSAE, b, raw):
    "Two SAEs (ours, or a sparsify coder) pick the same latents and reconstruct alike on `raw`."
    ea = a.encode(raw)
    if isinstance(b, TopKSAE): eb = b.encode(raw); rb = b.decode(*eb)
    else: t = b.encode(raw); eb = (t.top_acts, t.top_indices); rb = b.decode(*eb)
    assert torch.equal(ea.top_idx.sort(-1).values, eb[1].sort(-1).values)
    torch.testing.assert_close(a.decode(*ea).detach(), rb.detach(), rtol=1e-4, atol=1e-4)

def test_sparsify_native_coders_read_back(tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig
    torch.manual_seed(0)
    for name in ("h.0", "h.5"):                                      # GPT-2's hook points are h.L
        sc = SparseCoder(32, SparseCoderConfig(k=6, expansion_factor=4))
        with torch.no_grad(): sc.b_dec.normal_(); sc.encoder.bias.normal_(0, 0.1); sc.W_dec.mul_(3)
        sc.save_to_disk(tmp_path / name)
    (tmp_path / "config.json").write_text("{}")                        # a run's own files beside the coders are ignored
    suite = load_external(tmp_path, d_model=32)
    assert sorted(suite) == ["sparsify:h.0", "sparsify:h.5"] and suite["sparsify:h.5"].layers == [5]
    raw = torch.randn(40, 32) * 4
    for name in ("h.0", "h.5"): _same_sae(suite[f"sparsify:{name}"], SparseCoder.load_from_disk(tmp_path / name), raw)
    # and ours -> sparsify -> ours: the folded SAE on raw activations equals ours on scaled ones
    sae = _sae(32, 128, 8, [2, 9], [0.25, 4.0])
    to_sparsify(sae, tmp_path / "ours")
    for l, s in ((2, 0.25), (9, 4.0)):
        back = from_sparsify(tmp_path / "ours" / f"layers.{l}")
        torch.testing.assert_close(back.decode(*back.encode(raw)), sae.decode(*sae.encode(raw * s)).detach() / s, rtol=1e-4, atol=1e-4)
    sc = SparseCoder(32, SparseCoderConfig(k=6, expansion_factor=4, transcode=True)); sc.save_to_disk(tmp_path / "tc" / "layers.1")
    with pytest.raises(ExternalSAEError, match="'transcode': True"): from_sparsify(tmp_path / "tc" / "layers.1")
    sc = SparseCoder(32, SparseCoderConfig(k=6, expansion_factor=4)); sc.save_to_disk(tmp_path / "mlp" / "layers.1.mlp")
    with pytest.raises(ExternalSAEError, match="does not end in a block index"): from_sparsify(tmp_path / "mlp" / "layers.1.mlp")
    assert from_sparsify(tmp_path / "mlp" / "layers.1.mlp", layer=1).layers == [1]

@pytest.mark.parametrize("rescale,b_dec_in", [(False, True), (True, False)])
def test_saelens_native_topk_read_back(tmp_path, rescale, b_dec_in):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata
    cfg = sae_lens.TopKSAEConfig(d_in=24, d_sae=96, k=5, rescale_acts_by_decoder_norm=rescale, apply_b_dec_to_input=b_dec_in,
                                 metadata=SAEMetadata(hook_name="blocks.6.hook_resid_pre"))
    theirs = sae_lens.TopKSAE(cfg)
    with torch.no_grad():
        for p in (theirs.W_enc, theirs.W_dec): p.normal_()
        theirs.b_enc.normal_(0, 0.1); theirs.b_dec.normal_()
    theirs.save_model(tmp_path / "sae")
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    ours = from_saelens(tmp_path / "sae")
    assert ours.layers == [5]                                          # resid_pre of block 6 = block 5's output
    raw = torch.randn(40, 24) * 3
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(*ours.encode(raw)), loaded(raw), rtol=1e-4, atol=1e-4)
        z = loaded.encode(raw); e = ours.encode(raw)
        assert torch.equal((z > 0).nonzero()[:, 1].sort().values, e.top_idx[e.top_acts > 0].sort().values)

def test_saelens_round_trip_of_ours_both_ways(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _sae(16, 64, 4, [3], [0.125])
    path = to_saelens(sae, tmp_path, layer=3)
    loaded, back = sae_lens.SAE.load_from_disk(str(path), device="cpu"), read_sae(path)
    raw = torch.randn(32, 16) * 8
    with torch.no_grad(): torch.testing.assert_close(back.decode(*back.encode(raw)), loaded(raw), rtol=1e-4, atol=1e-4)
    assert back.layers == [3] and back.scales == [1.0]

def test_saelens_non_topk_refused(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    for cls, cfg_cls, arch in ((sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, "jumprelu"),
                               (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, "standard")):
        cls(cfg_cls(d_in=16, d_sae=64)).save_model(tmp_path / arch)
        with pytest.raises(ExternalSAEError, match=f"architecture '{arch}' is not a TopK SAE"): load_external(tmp_path / arch)
    (tmp_path / "neither").mkdir(); (tmp_path / "neither" / "notes.txt").write_text("x")
    with pytest.raises(ExternalSAEError, match="neither a sparsify SAE folder"): load_external(tmp_path / "neither")

def test_evaluate_external_matches_our_baseline_exported(tmp_path):
    "Our trained per-layer baseline, exported through sparsify's format and read back, scores exactly as the baseline itself."
    from groupsae.cli import main
    from groupsae.config import get_preset, override, runs_dir
    sets = ["data.n_train_tokens=2048", "data.n_eval_tokens=512", "train.n_tokens=2048", "activations.n_scale_tokens=256",
            "distances.n_tokens=1024", "eval.n_tokens=256", "eval.ce_tokens=96", "eval.claim_tokens=256"]
    args = [a for kv in sets for a in ("--set", kv)]
    for stage in ("activations", "distances", "group", "train"):
        assert main([stage, "--preset", "tiny", *args, "--out", str(tmp_path)]) == 0
    cfg = override(get_preset("tiny"), **{k: json.loads(v) for k, v in (s.split("=") for s in sets)})
    saes = runs_dir("tiny", tmp_path) / "saes"
    for l in range(4): to_sparsify(TopKSAE.load(saes / f"L{l:02d}"), tmp_path / "suite")
    ext = evaluate_external(cfg, tmp_path / "suite", root=tmp_path, progress=False)
    assert sorted(ext["suites"]) == ["baseline", "external", "ghat"] and ext["layers"] == [0, 1, 2, 3]
    by = {(r["sae"], r["layer"]): r for r in ext["pairs"]}
    for l in range(4):
        theirs, ours = by[(f"sparsify:layers.{l}", l)], by[(f"L{l:02d}", l)]
        for m in ("fvu", "l0", "dead_frac", "delta_ce", "kl"):
            assert theirs[m] == pytest.approx(ours[m], rel=1e-4, abs=1e-6), (l, m)
    assert ext["suites"]["external"]["spliced_all"]["delta_ce"] == pytest.approx(ext["suites"]["baseline"]["spliced_all"]["delta_ce"], rel=1e-4)
    assert (tmp_path / "results" / "tiny" / "eval_external.json").exists()
