"""Tokens/s of the trainer on the real job, side by side with sparsify's own Trainer.

The per-layer suite: one TopK SAE per SmolLM2 layer (30 layers, expansion 8, k 32, Adam, batches of 8 windows of
256 tokens), fed by one forward per batch. Then the group suite at G-hat (the groups of results/smollm2-cpu/groups.json
if the group stage ran, else the partition measured in DESIGN.md) on the same batches, and the measured wall-time
saving against the cost model's prediction: A + (G-hat+1)·T vs A + L·T, once with A and T in FLOPs (FlopCounterMode on
the body's forward, a dense SAE's training step: groupsae.flops) and once calibrated on this run's own per-layer timings. Finally
sparsify's Trainer on the same model, tokens and SAE sizes (fp32 on CPU, as sparsify runs there).

    python bench/bench_suite.py                 # fp32, 6 timed steps after 1 warm-up, sparsify after 5 (about 5 minutes)
    python bench/bench_suite.py --bf16          # bf16 autocast for the model forward and the SAE steps
    python bench/bench_suite.py --no-sparsify   # compare with the 335 tokens/s measured for sparsify in DESIGN.md

The last line reads: suite_tokens_per_s=X group_tokens_per_s=Y sparsify_tokens_per_s=Z speedup_vs_sparsify=S
saving_measured=M saving_predicted_flops=P saving_predicted_time=Q

`--stage` instead times the whole `train` stage of the smollm2-cpu preset with the study's real set of SAEs (baseline,
every distinct group, even groups, small SAEs: about 94) on `--tokens` tokens, in a temporary folder, and extrapolates
to the preset's train.n_tokens:

    python bench/bench_suite.py --stage --tokens 16000 --expansion 4 [--bf16]
"""
import argparse, json, sys, tempfile, time
from pathlib import Path
import torch
from groupsae.config import SAEConfig, TrainConfig, repo_root
from groupsae.models import load_model, blocks
from groupsae.data import prepare_data, special_ids
from groupsae.activations import iter_activations, estimate_scales
from groupsae.flops import paper_costs, suite_cost
from groupsae.study import SAESpec, group_name
from groupsae.train import Trainer

SPARSIFY_DESIGN = 335.0   # tokens/s, DESIGN.md
DESIGN_GROUPS = [[0, 1], list(range(2, 8)), list(range(8, 13)), list(range(13, 20)), list(range(20, 24)), [24, 25, 26], [27, 28]]

def ghat_groups(n_layers:int):
    p = repo_root() / "results" / "smollm2-cpu" / "groups.json"
    if p.exists():
        g = json.loads(p.read_text()); groups = g["partitions"][str(g["G_hat"])]; src = str(p)
    else: groups, src = DESIGN_GROUPS, "DESIGN.md (SmolLM2, centred, 16k tokens)"
    return [list(x) for x in groups] + [[n_layers - 1]], src

def time_suite(specs, model, windows, special, scales, args, label):
    "Train `specs` on the windows; return tokens/s over the timed steps, forward s/step and per-SAE s/step."
    sae_cfg = SAEConfig(expansion=8, k=32, dead_tokens=10_000_000)
    tr = Trainer(specs, model.config.hidden_size, scales, sae_cfg, TrainConfig(bf16=args.bf16))
    it = iter_activations(model, windows, tr.layers, 8, special, args.bf16, progress=False)
    tokens = 0
    for i in range(args.warmup + args.steps):
        if i == args.warmup: t0, c0, model_s0, wall0 = time.perf_counter(), time.process_time(), tr.model_s, list(tr.clock.read())
        acts = tr.next_batch(it)
        tr.step(acts)
        if i >= args.warmup: tokens += acts.shape[1]
    tr.log()                                   # the only host sync, as in fit()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_sae = [(w - w0) / args.steps for w, w0 in zip(tr.clock.read(), wall0)]
    fwd = (tr.model_s - model_s0) / args.steps
    print(f"{label}: {len(specs)} SAEs, {tokens / dt:,.0f} tokens/s ({dt / args.steps:.2f} s/step: forward {fwd:.2f} s, "
          f"SAEs {sum(per_sae):.2f} s, other {dt / args.steps - fwd - sum(per_sae):.3f} s); {tokens / cpu:,.0f} tokens per CPU-second", flush=True)
    return tokens / dt, fwd, per_sae, tokens / args.steps, tokens / cpu

def run_sparsify(model, windows, args):
    "Steady-state tokens/s of sparsify's Trainer (timestamps at each batch's forward)."
    from datasets import Dataset
    from sparsify import Trainer as SpTrainer, TrainConfig as SpConfig, SaeConfig
    n = 8 * (args.sparsify_warmup + args.steps + 1)
    ds = Dataset.from_dict({"input_ids": windows[:n].tolist()}).with_format("torch")
    with tempfile.TemporaryDirectory() as d:
        cfg = SpConfig(SaeConfig(expansion_factor=8, k=32), batch_size=8, optimizer="adam", loss_fn="fvu",
                       layers=list(range(len(blocks(model)))), log_to_wandb=False, save_every=10**9, save_dir=d)
        tr = SpTrainer(cfg, ds, model)
        starts, cpus = [], []
        def mark(*a): starts.append(time.perf_counter()); cpus.append(time.process_time())
        h = model.register_forward_pre_hook(mark)
        try: tr.fit()
        finally: h.remove()
    k, n_tok = args.sparsify_warmup, 8 * 256 * (len(starts) - 1 - args.sparsify_warmup)
    rate, cpu_rate = n_tok / (starts[-1] - starts[k]), n_tok / (cpus[-1] - cpus[k])
    print(f"sparsify Trainer: {len(cfg.layers)} SAEs, {rate:,.0f} tokens/s ({(starts[-1] - starts[k]) / (len(starts) - 1 - k):.2f} s/step); "
          f"{cpu_rate:,.0f} tokens per CPU-second", flush=True)
    return rate, cpu_rate

def stage_timing(args):
    "Time run_training on the smollm2-cpu preset with the study's SAEs (groups.json of the repo, else DESIGN.md's)."
    import resource, shutil
    from groupsae.config import get_preset, override, results_dir, save_json
    from groupsae.train import run_training
    root = Path(tempfile.mkdtemp(prefix="bench_stage_"))
    base_cfg = get_preset("smollm2-cpu")
    cfg = override(base_cfg, **{"train.n_tokens": args.tokens, "sae.expansion": args.expansion, "train.bf16": args.bf16,
                                "activations.bf16": args.bf16, "train.checkpoint_every": 0, "n_threads": args.threads})
    src = repo_root() / "results" / "smollm2-cpu"
    if not (src / "scales.json").exists(): sys.exit("run `groupsae activations` first (results/smollm2-cpu/scales.json)")
    shutil.copy(src / "scales.json", results_dir(cfg.preset, root) / "scales.json")
    if (src / "groups.json").exists(): shutil.copy(src / "groups.json", results_dir(cfg.preset, root) / "groups.json")
    else:   # nested partitions of layers 0..28 that pass through DESIGN.md's partition at G-hat = 7
        parts, groups = {}, [[l] for l in range(29)]
        while len(groups) > 1:
            parts[str(len(groups))] = [list(g) for g in groups]
            ok = [i for i in range(len(groups) - 1) if len(groups) <= 7 or any(set(groups[i] + groups[i + 1]) <= set(h) for h in DESIGN_GROUPS)]
            i = min(ok, key=lambda i: len(groups[i]) + len(groups[i + 1]))
            groups = groups[:i] + [groups[i] + groups[i + 1]] + groups[i + 2:]
        parts["1"] = [list(range(29))]
        even = [list(range(a, b)) for a, b in zip([0, 5, 9, 13, 17, 21, 25], [5, 9, 13, 17, 21, 25, 29])]
        save_json({"layers": list(range(29)), "G_hat": 7, "partitions": parts, "even_groups": {"7": even}},
                  results_dir(cfg.preset, root) / "groups.json")
    t0 = time.perf_counter()
    info = run_training(cfg, root, progress=True)
    stage = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    per_step = (info["wall_s"]) / info["n_steps"]
    steps_full = -(-base_cfg.train.n_tokens // (8 * 255))
    kinds = {}
    for n, a in info["saes"].items():
        k = n.split("-")[0] if n.startswith(("even", "small")) else ("group" if len(a["layers"]) > 1 else "baseline")
        kinds[k] = kinds.get(k, 0.0) + a["wall_s"] / info["n_steps"]
    print(f"train stage, smollm2-cpu, expansion {args.expansion}, {'bf16' if args.bf16 else 'fp32'}: {info['n_saes']} SAEs, "
          f"{info['tokens_per_sae']:,} tokens each in {info['n_steps']} steps; stage {stage:.0f} s (training {info['wall_s']:.0f} s, "
          f"{per_step:.1f} s/step: forward {info['model_forward_s'] / info['n_steps']:.1f} s, "
          + ", ".join(f"{k} {v:.1f} s" for k, v in kinds.items()) + f"); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
    print(f"stage_s={stage:.0f} per_step_s={per_step:.2f} projected_s_at_{base_cfg.train.n_tokens}_tokens={per_step * steps_full:.0f}")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6); ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--no-sparsify", action="store_true")
    ap.add_argument("--sparsify-warmup", type=int, default=5, help="sparsify's steps before timing (its first steps are slow)")
    ap.add_argument("--only-sparsify", action="store_true", help="time sparsify's Trainer alone")
    ap.add_argument("--stage", action="store_true", help="time the whole train stage of smollm2-cpu instead")
    ap.add_argument("--tokens", type=int, default=16_000, help="with --stage: training tokens per SAE")
    ap.add_argument("--expansion", type=int, default=4, help="with --stage: SAE expansion")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stage: return stage_timing(args)
    model, tok = load_model("smollm2")
    L, d = len(blocks(model)), model.config.hidden_size
    n_win = 8 * (max(args.warmup, args.sparsify_warmup) + args.steps + 1)
    windows = prepare_data(tok, "shakespeare", 256, n_train_tokens=n_win * 255, n_eval_tokens=255).train
    special = special_ids(tok)
    scales = dict(enumerate(estimate_scales(model, windows[:8], list(range(L)), 2040, special=special).tolist()))
    print(f"SmolLM2: {L} layers, d_model {d}; SAEs: expansion 8 (d_sae {8 * d}), k 32; batches of 8x256 tokens; "
          f"{'bf16' if args.bf16 else 'fp32'}; {args.threads} threads", flush=True)

    if args.only_sparsify: return run_sparsify(model, windows, args)
    base = [SAESpec(group_name([l]), [l], 8 * d, 32) for l in range(L)]
    rate_base, fwd_b, per_sae_b, tok_step, cpu_base = time_suite(base, model, windows, special, scales, args, "per-layer suite")
    groups, src = ghat_groups(L)
    gspecs = [SAESpec(group_name(g), g, 8 * d, 32) for g in groups]
    rate_group, fwd_g, per_sae_g, _, cpu_group = time_suite(gspecs, model, windows, special, scales, args, f"group suite at G-hat={len(groups) - 1}")
    print(f"  groups from {src}: {' / '.join(group_name(g) for g in groups)}")

    step_b, step_g = fwd_b + sum(per_sae_b), fwd_g + sum(per_sae_g)
    measured = 1 - step_g / step_b
    c = paper_costs("smollm2", n_tokens=int(tok_step), expansion=8)     # 05a_flops: FlopCounterMode, dense SAE
    A, T = c["A"], c["T"]
    pred_flops = suite_cost(A, T, L, len(groups) - 1, "fair")["saving"]
    Tt = sum(per_sae_b) / L
    pred_time = 1 - (fwd_b + len(groups) * Tt) / (fwd_b + L * Tt)
    print(f"wall-time saving of the group suite: measured {measured:.1%}; cost model {pred_flops:.1%} with FLOPs "
          f"(A={A / 1e9:.0f} GFLOP, T={T / 1e9:.1f} GFLOP per step), {pred_time:.1%} with this run's forward and per-SAE "
          f"times; relative gap {abs(measured - pred_time) / pred_time:.1%} (time), {abs(measured - pred_flops) / pred_flops:.1%} (FLOPs)")
    print(f"  per-SAE step: per-layer {Tt * 1e3:.0f} ms, group {sum(per_sae_g[:-1]) / (len(groups) - 1) * 1e3:.0f} ms "
          f"(the layer draw); forward {fwd_b:.2f} s vs {fwd_g:.2f} s")

    sp, sp_cpu = SPARSIFY_DESIGN, float("nan")
    if not args.no_sparsify:
        try: sp, sp_cpu = run_sparsify(model, windows, args)
        except Exception as e: print(f"sparsify run failed ({type(e).__name__}: {e}); using DESIGN.md's {SPARSIFY_DESIGN}")
    else: print(f"sparsify Trainer: {SPARSIFY_DESIGN:.0f} tokens/s (DESIGN.md, not rerun)")
    # tokens per CPU-second compare fairly on a shared machine (other processes stretch wall time, not CPU time)
    print(f"suite_tokens_per_s={rate_base:.0f} group_tokens_per_s={rate_group:.0f} sparsify_tokens_per_s={sp:.0f} "
          f"speedup_vs_sparsify={rate_base / sp:.2f} speedup_vs_sparsify_cpu={cpu_base / sp_cpu:.2f} saving_measured={measured:.3f} "
          f"saving_predicted_flops={pred_flops:.3f} saving_predicted_time={pred_time:.3f}")

if __name__ == "__main__":
    main()
