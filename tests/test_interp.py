"""What the 09 notebooks cannot show: the HTTP client against a real loopback server answering from the in-process
SmolLM2 (retries, timeouts, cache reuse, concurrency limit), and the interp stage end to end on the tiny preset
(LLM path and LLM-free measures, the `interp.llm` switch, seed replicas, the figure's bytes)."""
import json, subprocess, sys, threading
import numpy as np
from pathlib import Path
import pytest
import torch

from groupsae.llm_client import ChatServer, LLMError, OpenAIClient, TransformersClient, parse_choice
from groupsae.figures import draw

YES_NO = ["Yes", "No"]
QUESTIONS = [[{"role": "system", "content": "Answer Yes or No."},
              {"role": "user", "content": f"Is {c} the capital of France?"}] for c in ("Paris", "Rome", "Lyon", "Berlin")]


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(2)
    return TransformersClient.from_name("smollm2")


def test_modules_import_without_notebook_state():
    code = "import groupsae.interp_study as i, groupsae.llm_client as c; print(i.run_interp.__name__, c.OpenAIClient.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["run_interp", "OpenAIClient"]


def test_http_answers_are_the_in_process_models(smol, tmp_path):
    with ChatServer(smol) as srv:
        assert srv._httpd.server_address[0] == "127.0.0.1"
        api = OpenAIClient(srv.url, "smollm2", cache_dir=tmp_path, timeout=60)
        assert api.complete(QUESTIONS[0], max_tokens=12) == smol.complete(QUESTIONS[0], max_tokens=12)
        remote, local = api.choose_many(QUESTIONS, YES_NO), smol.choose_many(QUESTIONS, YES_NO)
        assert [c.answer for c in remote] == [c.answer for c in local]          # logprobs path
        for r, l in zip(remote, local):
            assert set(r.logprobs) == set(YES_NO)
            assert all(abs(r.logprobs[o] - l.logprobs[o]) < 1e-3 for o in YES_NO)
        text_api = OpenAIClient(srv.url, "smollm2", logprobs=False)              # text path
        assert [c.answer for c in text_api.choose_many(QUESTIONS, YES_NO)] == \
               [parse_choice(smol.complete(q, text_api.choice_tokens), YES_NO) for q in QUESTIONS]
    with ChatServer(smol, logprobs=False) as srv:                               # an endpoint without logprobs
        got = OpenAIClient(srv.url, "smollm2").choose_many(QUESTIONS[:2], YES_NO)
        assert all(c.logprobs is None and c.text is not None for c in got)


def test_retries_on_5xx_and_429(smol):
    for status in (500, 503, 429):
        with ChatServer(smol, fail_first=2, fail_status=status) as srv:
            api = OpenAIClient(srv.url, "smollm2", backoff=0.01, max_retries=3)
            assert api.complete(QUESTIONS[1], max_tokens=4) == smol.complete(QUESTIONS[1], max_tokens=4)
            assert (srv.n_requests, api.n_retries) == (3, 2)


def test_gives_up_after_max_retries_and_does_not_retry_client_errors(smol):
    with ChatServer(smol, fail_first=10) as srv:
        api = OpenAIClient(srv.url, "smollm2", backoff=0.01, max_retries=2)
        with pytest.raises(LLMError, match="no answer after 3 attempts"): api.complete(QUESTIONS[0], max_tokens=2)
        assert srv.n_requests == 3
    with ChatServer(smol, fail_first=5, fail_status=401) as srv:
        api = OpenAIClient(srv.url, "smollm2", backoff=0.01, api_key_env="GROUPSAE_TEST_KEY")
        with pytest.raises(LLMError, match="GROUPSAE_TEST_KEY"): api.complete(QUESTIONS[0], max_tokens=2)
        assert srv.n_requests == 1                                              # 401 is not retried
    port = srv.port                                                             # the server is gone: refused
    api = OpenAIClient(f"http://127.0.0.1:{port}/v1", "smollm2", backoff=0.01, max_retries=1, timeout=2)
    with pytest.raises(LLMError, match="no answer after 2 attempts"): api.complete(QUESTIONS[0], max_tokens=2)


def test_timeout_is_retried(smol):
    # the timeout sits far from both a real answer (well under 1 s idle, slower when the machine is loaded) and the stall
    with ChatServer(smol, stall_first=2, stall_s=8.0) as srv:
        api = OpenAIClient(srv.url, "smollm2", backoff=0.01, timeout=4.0)
        assert api.complete(QUESTIONS[2], max_tokens=4) == smol.complete(QUESTIONS[2], max_tokens=4)
        assert api.n_retries == 2 and srv.n_requests == 3


def test_cache_makes_a_second_run_free(smol, tmp_path):
    with ChatServer(smol) as srv:
        first = OpenAIClient(srv.url, "smollm2", cache_dir=tmp_path)
        a = first.choose_many(QUESTIONS, YES_NO) + [first.complete(QUESTIONS[0], max_tokens=6)]
        n = srv.n_requests
        assert n == len(QUESTIONS) + 1
        files = sorted(tmp_path.rglob("*.json"))
        assert len(files) == n and all(json.loads(f.read_text())["response"]["choices"] for f in files)
        assert not list(tmp_path.rglob("*.tmp"))                                # atomic writes leave no debris
        again = OpenAIClient(srv.url, "smollm2", cache_dir=tmp_path)            # a resumed run: a new client
        assert again.choose_many(QUESTIONS, YES_NO) + [again.complete(QUESTIONS[0], max_tokens=6)] == a
        assert srv.n_requests == n and again.n_requests == 0 and again.n_cache_hits == n
        files[0].write_text("{truncated")                                       # an unreadable entry is asked again
        again.choose_many(QUESTIONS, YES_NO); again.complete(QUESTIONS[0], max_tokens=6)
        assert srv.n_requests == n + 1
        changed = OpenAIClient(srv.url, "smollm2", cache_dir=tmp_path)          # other parameters: other keys
        changed.complete(QUESTIONS[0], max_tokens=7)
        assert srv.n_requests == n + 2


def test_concurrency_limit(smol):
    qs = [[{"role": "user", "content": f"Say {i}."}] for i in range(8)]
    for limit in (1, 3):
        with ChatServer(smol, delay_s=0.15) as srv:
            api = OpenAIClient(srv.url, "smollm2", max_concurrency=limit)
            api.complete_many(qs, max_tokens=1)
            assert srv.max_in_flight == limit and srv.n_requests == len(qs)
    with ChatServer(smol, delay_s=0.15) as srv:                                  # the semaphore holds across callers
        api = OpenAIClient(srv.url, "smollm2", max_concurrency=2)
        ts = [threading.Thread(target=api.complete_many, args=(qs[:4],), kwargs={"max_tokens": 1}) for _ in range(3)]
        for t in ts: t.start()
        for t in ts: t.join(timeout=120)
        assert srv.max_in_flight == 2 and srv.n_requests == 12


# --- the interp stage end to end on the tiny preset ---------------------------------------------------------------

class CountingClient:
    "Wraps a client and counts the model calls, to check that a resumed run asks nothing."
    def __init__(self, inner): self.inner, self.calls = inner, 0
    def complete(self, *a, **k): self.calls += 1; return self.inner.complete(*a, **k)
    def choose(self, *a, **k): self.calls += 1; return self.inner.choose(*a, **k)
    def choose_many(self, *a, **k): self.calls += 1; return self.inner.choose_many(*a, **k)


def _tiny_study(root:Path, **changes):
    from groupsae.config import get_preset, override, results_dir, runs_dir, save_json
    from groupsae.sae import TopKSAE
    from groupsae.study import group_name
    (root / "settings.ini").touch()
    cfg = override(get_preset("tiny"), **({"interp.measure_tokens": 4096, "interp.n_pattern_latents": 20} | changes))
    res = results_dir("tiny", root)
    parts = {3: [[0], [1], [2]], 2: [[0, 1], [2]], 1: [[0, 1, 2]]}
    save_json({"layers": [0, 1, 2], "partitions": {str(G): gs for G, gs in parts.items()},
               "amad": {"3": 0.0, "2": 0.12, "1": 0.3}, "G_hat": 2}, res / "groups.json")
    save_json({"n_layers": 4, "baseline_fvu": 0.1}, res / "summary.json")   # written earlier by the evaluation
    torch.manual_seed(0)
    for gs in parts.values():
        for g in gs:
            TopKSAE(64, 256, 8, layers=g, scales=[1.0 / (l + 1) for l in g]).save(runs_dir("tiny", root) / "saes" / group_name(g))
    return cfg, res


def test_run_interp_tiny_end_to_end_and_resume(tmp_path):
    from groupsae.interp_study import run_interp
    from groupsae.models import load_model
    torch.set_num_threads(1)
    cfg, res = _tiny_study(tmp_path)
    client = CountingClient(TransformersClient(*load_model("tiny-llama")))
    out = run_interp(cfg, tmp_path, client=client, log=None)
    assert client.calls > 0
    saved = json.loads((res / "interp.json").read_text())
    assert saved["config_hash"] == cfg.hash() and saved["latents"]
    for r in saved["latents"]:
        assert 0 <= r["detection"] <= 1 and 0 <= r["fuzzing"] <= 1 and r["explanation"]
        assert r["n_detection"] == 2 * cfg.interp.n_score and r["n_fuzzing"] == cfg.interp.n_score
    studied = {(r["sae"], r["mode"]) for r in saved["latents"]}
    assert ("L00-01", "pooled") in studied or any(s["sae"] == "L00-01" and s["mode"] == "pooled" for s in saved["skipped"])
    assert len({r["latent"] for r in saved["latents"]}) > 1
    first = [r["latent"] for r in saved["latents"] if r["sae"] == "L00" and r["family"] == "baseline"]
    assert sorted(first) != list(range(len(first)))                                    # sampled, not ids 0..n-1
    summary = json.loads((res / "summary.json").read_text())
    assert summary["n_layers"] == 4 and summary["baseline_fvu"] == 0.1                 # merged, not overwritten
    for k in ("baseline_detection", "ghat_detection", "baseline_fuzzing", "ghat_fuzzing"):
        assert 0 <= summary[k] <= 1
    assert "scorer_calibration" in summary and isinstance(summary["scorer_better_than_chance"], bool)
    judgements = list((tmp_path / "runs" / "tiny" / "interp").glob("L*/*.json"))
    assert judgements and all("judgements" in json.loads(p.read_text()) for p in judgements)
    draw("tiny", "interp.json", tmp_path)                                              # as the stage runner does
    assert (tmp_path / "figures" / "tiny" / "fig5_interp_vs_amad.png").exists()
    # resume: the same config and client ask nothing (latents and calibration are read back from runs/tiny/interp)
    again = CountingClient(client.inner)
    out2 = run_interp(cfg, tmp_path, client=again, log=None)
    assert [(r["sae"], r["latent"], r["detection"]) for r in out2["latents"]] == \
           [(r["sae"], r["latent"], r["detection"]) for r in out["latents"]]
    n_studied = len({(r["sae"], r["mode"], tuple(r["layers"]), r["latent"]) for r in out["latents"]})
    assert again.calls == 0 and client.calls >= 3 * n_studied   # explain + detection + fuzzing per latent, then nothing
    # the LLM-free measures beside the LLM's, in the file and the summary
    m = saved["measures"]
    fams = {(r["family"], r["mode"]) for r in m["summary"]}
    assert fams >= {("baseline", "layer"), ("ghat", "layer"), ("ghat", "pooled"), ("g1", "layer"), ("g1", "pooled"),
                    ("untrained", "layer"), ("residual", "layer")}
    for k in ("baseline_pattern_f1", "ghat_pattern_f1", "g1_pattern_f1", "pattern_calibration_f1", "baseline_probe_accuracy",
              "ghat_probe_accuracy", "g1_probe_accuracy", "residual_probe_accuracy", "untrained_probe_accuracy"):
        assert 0 <= summary[k] <= 1, k
    assert summary["pattern_calibration_f1"] >= 0.95 and summary["pattern_calibration_passed"] is True
    per_unit = [u for u in m["units"] if u["family"] == "baseline"]
    assert per_unit and all(u["n_scored"] + sum(u["skipped"].values()) > 0 for u in per_unit)
    assert set(per_unit[0]["probes"]) == {t["name"] for t in m["tasks"]} and set(per_unit[0]["probes"]["speaker"]) == {"1", "2", "5", "20"}
    assert out2["measures"]["summary"] == out["measures"]["summary"]                      # deterministic


def test_llm_switch_off_makes_no_call_and_nulls_the_llm_keys(tmp_path):
    from groupsae.interp_study import run_interp
    torch.set_num_threads(1)
    cfg, res = _tiny_study(tmp_path, **{"interp.llm": False})
    class Refuse:
        def __getattr__(self, name): raise AssertionError("the LLM was asked with interp.llm off")
    out = run_interp(cfg, tmp_path, client=Refuse(), log=None)
    assert out["llm"] is False and "latents" not in out and "calibration" not in out
    summary = json.loads((res / "summary.json").read_text())
    assert all(summary[k] is None for k in ("baseline_detection", "ghat_fuzzing", "scorer_calibration"))
    assert summary["llm_scored"] is False and 0 <= summary["ghat_pattern_f1"] <= 1
    assert not (tmp_path / "runs" / "tiny" / "interp" / "llm_cache").exists()


def test_seed_replicas_give_a_spread_and_the_figure_is_byte_stable(tmp_path):
    from groupsae.figures import draw
    from groupsae.interp_study import run_interp
    from groupsae.sae import TopKSAE
    torch.set_num_threads(1)
    cfg, res = _tiny_study(tmp_path, **{"interp.llm": False})
    saes = tmp_path / "runs" / "tiny" / "saes"
    for name in ("L00", "L01", "L02", "L00-01"):
        for s in (1, 2):   # replicas as the train stage names them: other weights, same layers and scales
            old = TopKSAE.load(saes / name)
            TopKSAE(64, 256, 8, layers=old.layers, scales=old.scales, seed=100 * s).save(saes / f"{name}@s{s}")
    out = run_interp(cfg, tmp_path, log=None)
    rows = {(r["family"], r["mode"]): r for r in out["measures"]["summary"]}
    for fam in ("baseline", "ghat"):
        r = rows[(fam, "layer")]
        assert r["seeds"] == [0, 1, 2] and len(r["pattern_f1_seeds"]) == 3 and r["pattern_f1_seed_sd"] >= 0
        assert np.isclose(r["pattern_f1_seed_sd"], np.std(r["pattern_f1_seeds"], ddof=1), atol=1e-3)
    assert "seeds" not in rows[("g1", "layer")]                       # no replica of L00-02
    summary = json.loads((res / "summary.json").read_text())
    assert summary["baseline_pattern_f1_sd"] == rows[("baseline", "layer")]["pattern_f1_seed_sd"]
    png = tmp_path / "figures" / "tiny" / "fig5_interp_vs_amad.png"
    draw("tiny", "interp.json", tmp_path); first = png.read_bytes()      # the stage runner draws it after the stage
    draw("tiny", "interp.json", tmp_path)
    assert png.read_bytes() == first
