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
