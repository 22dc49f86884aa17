"""Issue 27 from the installed package: the SAE's per-dimension normalisation (save/load with its buffers, the exact splice of a
perfect reconstruction on several families, the sparsify export), the geometry diagnostic (a planted massive dimension,
constant dimensions), the standardised FVU and the config field."""
import copy, json
import pytest, torch
from groupsae.config import ConfigError, get_preset, override
from groupsae.data import keep_mask
from groupsae.evaluate import ReconStats, clean_pass, fvu_std, splice, spliced_forward
from groupsae.export import to_sparsify
from groupsae.geometry import LayerStats, distance_view, layer_geometry
from groupsae.models import blocks, load_model
from groupsae.sae import NORMALIZE_MODES, TopKSAE

def _stats(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3, torch.rand(n, d, generator=g) * 2 + 0.1

@pytest.mark.parametrize("mode", NORMALIZE_MODES[1:])
@pytest.mark.parametrize("d_model,layers", [(16, [0]), (48, [2, 5, 7])])
def test_save_load_round_trip_keeps_the_normalisation(tmp_path, mode, d_model, layers):
    sae = TopKSAE(d_model, 4 * d_model, 8, layers=layers, scales=[0.5 ** i for i in range(1, len(layers) + 1)], seed=0, normalize=mode)
    mean, std = _stats(len(layers), d_model)
    sae.set_stats_(mean, std, [1, 3] if mode.endswith("passthrough") else ())
    with torch.no_grad(): sae.b_dec.normal_(); sae.b_enc.normal_(0, 0.1); sae.W_enc.mul_(1.5)
    back = TopKSAE.load(sae.save(tmp_path / "sae"))
    assert back.normalize == mode and json.loads((tmp_path / "sae" / "cfg.json").read_text())["normalize"] == mode
    assert set(back.state_dict()) == {"W_enc", "W_dec", "b_enc", "b_dec", "x_mean", "x_unit", "passthrough"}
    for k, v in sae.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(40, d_model) * 4
    rows = torch.tensor(layers * 40)[:40]
    with torch.no_grad(): assert torch.equal(back(x, layer=rows).x_hat, sae(x, layer=rows).x_hat)

def test_scalar_sae_keeps_its_files(tmp_path):
    sae = TopKSAE(16, 64, 4, layers=[1], scales=[0.3], seed=0)
    sae.save(tmp_path)
    assert "normalize" not in json.loads((tmp_path / "cfg.json").read_text())
    assert set(TopKSAE.load(tmp_path).state_dict()) == {"W_enc", "W_dec", "b_enc", "b_dec"}

def _exact(d, mode, layers, scales):
    "Decoder rows +e_i and -e_i, k = d: every input reconstructed exactly in the SAE's own coordinates."
    sae = TopKSAE(d, 2 * d, d, layers=layers, scales=scales, normalize=mode)
    with torch.no_grad(): sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)])); sae.W_enc.copy_(sae.W_dec)
    return sae

@pytest.mark.parametrize("family", ["tiny-llama", "tiny-neox", "tiny-gemma2"])
@pytest.mark.parametrize("mode", ["dim", "passthrough", "dim+passthrough"])
def test_perfect_reconstruction_spliced_leaves_logits_unchanged(family, mode):
    model, tok = load_model(family)
    model = copy.deepcopy(model)
    with torch.no_grad():                                   # a massive dimension through the residual stream
        emb = model.get_input_embeddings().weight
        emb[:, 5] = emb[:, 5] * 300 + 30
    torch.manual_seed(0)
    ids = torch.randint(3, 1000, (2, 16)); ids[:, 0] = tok.bos_token_id
    keep = keep_mask(ids, {tok.bos_token_id})
    with torch.no_grad():
        ref = model(ids).logits
        cp = clean_pass(model, ids)
        st = LayerStats([1, 2]); st.update(torch.stack([cp.resid[l][keep] for l in (1, 2)]))
        mean, std, massive = st.sae_stats([1, 2], ratio=100)
        assert 5 in massive
        sae = _exact(model.config.hidden_size, mode, [1, 2], [0.5, 0.25])
        sae.set_stats_(mean, std, massive if mode.endswith("passthrough") else ())
        out = spliced_forward(model, ids, {1: splice(sae, 0.5, keep, 1), 2: splice(sae, 0.25, keep, 2)})
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6 * ref.abs().max().item())

def test_dim_sae_exports_to_sparsify(tmp_path):
    from sparsify import SparseCoder
    sae = TopKSAE(24, 96, 6, layers=[0, 4], scales=[0.2, 0.05], seed=0, normalize="dim")
    sae.set_stats_(*_stats(2, 24))
    with torch.no_grad(): sae.b_dec.normal_(); sae.b_enc.normal_(0, 0.1)
    to_sparsify(sae, tmp_path)
    for l, s in ((0, 0.2), (4, 0.05)):
        sc = SparseCoder.load_from_disk(tmp_path / f"layers.{l}")
        raw = torch.randn(64, 24) * 10 + 3
        ours, theirs = sae.encode(raw * s, l), sc.encode(raw)
        assert torch.equal(ours.top_idx.sort(-1).values, theirs.top_indices.sort(-1).values)
        torch.testing.assert_close(sc.decode(theirs.top_acts, theirs.top_indices), sae.decode(*ours, layer=l).detach() / s,
                                   rtol=1e-4, atol=1e-4)
    pt = TopKSAE(24, 96, 6, layers=[0], scales=[1.0], normalize="passthrough")
    pt.set_stats_(*_stats(1, 24), [2])
    with pytest.raises(ValueError, match="cannot express"): to_sparsify(pt, tmp_path / "pt")

def test_geometry_finds_a_planted_massive_dimension():
    torch.manual_seed(0)
    acts = torch.randn(3, 1000, 64)
    acts[2, 123, 17] = 5000.                               # ~7,500x its token's median magnitude
    acts[0, :, 3] *= 30                                    # dominant variance, no outlier: not massive
    g = layer_geometry(acts.split(100, dim=1), layers=[4, 5, 6])
    assert [g["layers"][l]["massive_dims"] for l in ("4", "5", "6")] == [[], [], [17]]
    assert g["layers"]["4"]["top1_var_share"] > 0.9 and g["layers"]["4"]["top_dims"][0] == 3
    assert g["layers"]["5"]["top1_var_share"] < 0.05 and g["n_tokens"] == 1000 and "Sun et al" in g["rule"]

def test_constant_dimension_has_a_stated_fallback_never_nan():
    acts = torch.randn(2, 300, 16) + 1
    acts[0, :, 4] = 2.5; acts[1, :, 9] = 0.
    st = LayerStats(); st.update(acts)
    sd = st.std()
    assert torch.isfinite(sd).all() and (sd > 0).all()
    assert sd[0, 4] == st.var[0].sqrt().median() and sd[1, 9] == st.var[1].sqrt().median()   # the layer's median std
    assert torch.isfinite(st.var_share()).all() and st.var_share()[0, 4] == 0
    for how in ("centre", "standardise", "drop_massive"): assert torch.isfinite(distance_view(acts, st, how)).all()
    sae = TopKSAE(16, 64, 4, layers=[0, 1], scales=[1.0, 1.0], normalize="dim")
    sae.set_stats_(st.mean.float(), sd.float())
    assert torch.isfinite(sae.to_internal(acts[0], 0)).all()
    flat = LayerStats([7]); flat.update(torch.full((1, 50, 16), 3.))
    with pytest.raises(ValueError, match="layers \\[7\\] have zero total variance"): flat.var_share()
    with pytest.raises(ValueError, match="most dimensions are constant"): flat.std()
    with pytest.raises(ValueError, match="finite and positive"): sae.set_stats_(st.mean.float(), st.var.sqrt().float())

def test_standardised_fvu_is_not_dominated_by_one_dimension():
    torch.manual_seed(0)
    x = torch.randn(500, 32); x[:, 0] *= 100
    x_hat = x.mean(0).expand_as(x).clone(); x_hat[:, 0] = x[:, 0]     # only the dominant dimension reconstructed
    st = ReconStats(64); st.update(x, x_hat, torch.ones(500, 2), torch.zeros(500, 2, dtype=torch.long))
    r = st.result()
    assert r["fvu"] < 0.01 and r["fvu_std"] == pytest.approx(31 / 32) and fvu_std(x, x_hat).item() == pytest.approx(31 / 32)
    x[:, 5] = 1.                                               # a constant dimension is left out, not NaN
    assert fvu_std(x, x_hat).item() == pytest.approx(30 / 31)

def test_config_field():
    cfg = get_preset("gemma3-cpu")
    assert cfg.sae.normalize == "dim" and get_preset("smollm2-cpu").sae.normalize == "scalar"   # issue 27's choice per model
    assert override(cfg, **{"sae.normalize": "scalar"}).sae.normalize == "scalar"
    with pytest.raises(ConfigError, match="sae.normalize: unknown 'std'"): override(cfg, **{"sae.normalize": "std"})
