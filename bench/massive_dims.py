"""Issue 27: SAE recipes that one massive residual dimension does not dominate, side by side on Gemma 3 270M and SmolLM2.

For each model, on the preset's Shakespeare split (BOS and special tokens dropped, the preset's SAE size, learning rate,
bf16 and input scales from the committed results/<preset>/scales.json), one pass extracts the chosen layers' activations
of the first --train-tokens training tokens into memory; their per-dimension statistics (geometry.LayerStats) give the
standardisation and the massive dimensions. Then one Trainer trains, from the same batches in the same order, one
per-layer SAE per (recipe, layer), every recipe starting from the same initial weights for a layer:

  scalar           the paper's recipe: each layer divided by one number (mean norm 1)
  dim              every dimension centred and divided by its std (06_sae, normalize='dim')
  passthrough      the massive dimensions copied from the input, the paper's recipe on the rest
  dim+passthrough  both

and evaluates every (recipe, layer) pair on the same held-out windows with the package's own evaluation (08_evaluate):
FVU, the standardised FVU (fvu_std), the fraction of latents that never fire (dead), L0, ΔCE% and KL. With --distances,
the angular distances of every layer on --dist-tokens training tokens are measured under three views (03a_geometry's
distance_view: centred as the study does, standardised, without the massive dimensions) and grouped as the study groups
them (paper method, θ = 0.2): Ĝ, its AMAD and its groups under each view.

Run alone on the machine (the forward and the SAE steps share its cores):
    .venv/bin/python bench/massive_dims.py [--models gemma3 smollm2] [--train-tokens 24576] [--eval-windows 8] [--distances]
Prints one table per model and, with --json PATH, writes every number to PATH.
"""
import argparse, json, math, platform, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch
from groupsae.config import get_preset, override, round_sig, use_bf16
from groupsae.activations import study_inputs, iter_activations, load_scales
from groupsae.geometry import LayerStats, VIEWS, distance_view
from groupsae.distances import AngularDistances
from groupsae.grouping import partitions, amad, amad_weighted, select_g
from groupsae.models import blocks
from groupsae.sae import TopKSAE, NORMALIZE_MODES
from groupsae.study import SAESpec
from groupsae.train import Trainer, _seed_of
from groupsae.evaluate import evaluate

PRESETS = {"gemma3": "gemma3-cpu", "smollm2": "smollm2-cpu"}
DEFAULT_LAYERS = {"gemma3": [0, 3, 6, 12], "smollm2": [0, 3, 6, 12]}

def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception: return platform.processor() or "unknown"

def collect(model, windows, layers, batch_size, special, bf16, n_tokens):
    "The chosen layers' activations of the first n_tokens kept positions, as a list of batches [n_layers, n, d_model]."
    out, seen = [], 0
    for acts in iter_activations(model, windows, layers, batch_size, special, bf16, progress=False):
        acts = acts[:, : n_tokens - seen].clone(); out.append(acts); seen += acts.shape[1]
        if seen >= n_tokens: break
    return out

def build_trainer(cfg, layers, modes, d_model, scales, stats, device="cpu"):
    "One Trainer holding an SAE per (recipe, layer); every recipe of a layer starts from the same weights."
    specs = [SAESpec(f"{m}/L{l:02d}", (l,), cfg.sae.d_sae(d_model), cfg.sae.k) for m in modes for l in layers]
    tr = Trainer(specs, d_model, scales, cfg.sae, cfg.train, seed=cfg.seed, device=device)
    for s in specs:   # rebuilt with the recipe's normalisation (the Trainer builds 'scalar' SAEs)
        mode, l = s.name.split("/")[0], s.layers[0]
        sae = TopKSAE(d_model, s.d_sae, s.k, cfg.sae.aux_k, cfg.sae.aux_coef, [l], [scales[l]],
                      compute_dtype=torch.bfloat16 if tr.bf16 else None, seed=_seed_of(cfg.seed, f"L{l:02d}", "init"),
                      normalize=mode)
        if mode != "scalar": stats.apply_to_(sae)
        tr.saes[s.name] = sae.to(device)
        tr.opts[s.name] = torch.optim.Adam(sae.parameters(), lr=cfg.train.lr_for(s.d_sae), betas=cfg.train.betas,
                                           fused=torch.device(device).type in ("cpu", "cuda"))
    return tr

def group_views(model, inp, cfg, n_tokens, threshold):
    "Ĝ, its AMAD and groups of every layer but the last, under each distance view, on n_tokens training tokens."
    L = len(blocks(model)); layers = list(range(L))
    batches = collect(model, inp.split.train, layers, cfg.data.batch_size, inp.special, use_bf16(cfg.activations.bf16), n_tokens)
    st = LayerStats(layers)
    for b in batches: st.update(b)
    out = {"n_tokens": st.n, "massive_union": sorted({d for ds in st.massive_dims() for d in ds})}
    for how in VIEWS:
        est = AngularDistances(L)
        for b in batches: est.update(distance_view(b, st, how))
        d = est.compute().numpy()[:-1, :-1]            # the last layer keeps its own SAE (grouping.exclude_last)
        parts = partitions(d, cfg.grouping.method)
        am = {G: amad(d, g) for G, g in parts.items()}
        amw = {G: amad_weighted(d, g) for G, g in parts.items()}
        g_hat, g_w = select_g(am, threshold), select_g(amw, threshold)
        out[how] = {"G_hat": g_hat, "amad_G_hat": am[g_hat], "groups": parts[g_hat], "G_hat_weighted": g_w,
                    "groups_weighted": parts[g_w], "adjacent": np.diag(d, 1).round(4).tolist()}
    return out

def fmt_groups(groups) -> str:
    return " / ".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)

def run_model(name, args):
    cfg = get_preset(PRESETS[name])
    if args.train_tokens > cfg.data.n_train_tokens:   # a larger budget than the preset's: a larger training split (the eval split moves)
        cfg = override(cfg, **{"data.n_train_tokens": args.train_tokens + 4096})
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    inp = study_inputs(cfg)
    model, d_model = inp.model, inp.model.config.hidden_size
    layers = args.layers or DEFAULT_LAYERS[name]
    modes = args.modes or (NORMALIZE_MODES if name == "gemma3" else ("scalar", "dim"))
    scales = load_scales(cfg.preset)
    dead_tokens = args.dead_tokens or max(1, round(cfg.sae.dead_tokens * args.train_tokens / cfg.train.n_tokens))
    cfg = override(cfg, **{"sae.dead_tokens": dead_tokens, "train.n_tokens": args.train_tokens})
    res = {"model": cfg.model.name, "preset": cfg.preset, "layers": layers, "modes": list(modes), "train_tokens": args.train_tokens,
           "expansion": cfg.sae.expansion, "k": cfg.sae.k, "lr": cfg.train.lr_for(cfg.sae.d_sae(d_model)),
           "bf16": {k: use_bf16(v) for k, v in (("forward", cfg.activations.bf16), ("sae", cfg.train.bf16), ("eval_blocks", cfg.eval.bf16),
                                                 ("eval_head", getattr(cfg.eval, "head_bf16", False)))},
           "dead_tokens": dead_tokens, "seconds": {"load": time.perf_counter() - t0}}
    t = time.perf_counter()
    batches = collect(model, inp.split.train, layers, cfg.data.batch_size, inp.special, use_bf16(cfg.activations.bf16), args.train_tokens)
    stats = LayerStats(layers)
    for b in batches: stats.update(b)
    res["seconds"]["extract"] = time.perf_counter() - t
    res["geometry"] = {str(l): {"top1_var_share": s1, "top_dim": int(dm), "massive_dims": m}
                       for l, s1, dm, m in zip(layers, stats.top_share(1).tolist(), stats.var.argmax(1).tolist(), stats.massive_dims())}
    t = time.perf_counter()
    tr = build_trainer(cfg, layers, modes, d_model, scales, stats)
    for b in batches: tr.step(b)
    tr.check_finite()
    res["seconds"]["train"] = time.perf_counter() - t
    acct = tr.accounting()
    saes = {n: s.eval().requires_grad_(False) for n, s in tr.saes.items()}
    t = time.perf_counter()
    windows = inp.split.eval[: args.eval_windows]
    ev = evaluate(model, windows, saes, [(n, s.layers[0]) for n, s in saes.items()], scales, inp.special, cfg.eval.batch_size,
                  ce=True, progress=False, bf16=res["bf16"]["eval_blocks"], chunk=cfg.eval.head_chunk,
                  **({"head_bf16": res["bf16"]["eval_head"]} if hasattr(cfg.eval, "head_bf16") else {}))
    res["seconds"]["evaluate"] = time.perf_counter() - t
    res["clean_ce"], res["n_eval_tokens"], res["n_ce_positions"] = ev.clean_ce, ev.n_tokens, ev.n_ce
    res["pairs"] = {n: {k: m[k] for k in ("fvu", "fvu_std", "dead_frac", "l0", "delta_ce", "kl")} | {"train_dead_frac": acct[n]["dead_frac"],
                        "train_fvu_internal": acct[n]["fvu"]} for (n, l), m in ev.pairs.items()}
    if args.distances and name in args.distances:
        t = time.perf_counter()
        res["distances"] = group_views(model, inp, cfg, args.dist_tokens, cfg.grouping.threshold)
        res["seconds"]["distances"] = time.perf_counter() - t
    res["seconds"]["total"] = time.perf_counter() - t0
    del model, inp
    return res

def print_model(r):
    print(f"\n## {r['model']} ({r['preset']}): {r['train_tokens']:,} training tokens per SAE, expansion {r['expansion']}, k {r['k']}, "
          f"lr {r['lr']:.3g}, bf16 {r['bf16']}, dead after {r['dead_tokens']:,} tokens; "
          f"evaluated on {r['n_eval_tokens']:,} held-out tokens ({r['n_ce_positions']:,} next-token positions), clean CE {r['clean_ce']:.3f}")
    print("geometry of the training sample: " + "; ".join(f"L{l} top-1 {g['top1_var_share']:.0%} (dim {g['top_dim']})"
          + (f" massive {g['massive_dims']}" if g["massive_dims"] else "") for l, g in r["geometry"].items()))
    print(f"| layer | recipe | FVU | std. FVU | dead (eval) | L0 | ΔCE % | KL |\n|---|---|---|---|---|---|---|---|")
    for l in r["layers"]:
        for m in r["modes"]:
            p = r["pairs"][f"{m}/L{l:02d}"]
            print(f"| {l} | {m} | {p['fvu']:.3f} | {p['fvu_std']:.3f} | {p['dead_frac']:.1%} | {p['l0']:.1f} | {p['delta_ce']:.1f} | {p['kl']:.3f} |")
    print("| mean | recipe | FVU | std. FVU | dead | L0 | ΔCE % | KL |")
    for m in r["modes"]:
        ps = [r["pairs"][f"{m}/L{l:02d}"] for l in r["layers"]]
        avg = lambda k: sum(p[k] for p in ps) / len(ps)
        print(f"| all | {m} | {avg('fvu'):.3f} | {avg('fvu_std'):.3f} | {avg('dead_frac'):.1%} | {avg('l0'):.1f} | {avg('delta_ce'):.1f} | {avg('kl'):.3f} |")
    if "distances" in r:
        d = r["distances"]
        print(f"distances on {d['n_tokens']:,} training tokens (massive dims of any layer: {d['massive_union']}):")
        for how in VIEWS:
            v = d[how]
            print(f"  {how:13s} Ĝ = {v['G_hat']} (AMAD {v['amad_G_hat']:.3f}): {fmt_groups(v['groups'])}; size-weighted Ĝ = {v['G_hat_weighted']}: "
                  f"{fmt_groups(v['groups_weighted'])}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma3", "smollm2"], choices=list(PRESETS))
    ap.add_argument("--layers", type=int, nargs="+", help="layers (default: 0 3 6 12)")
    ap.add_argument("--modes", nargs="+", choices=NORMALIZE_MODES, help="recipes (default: all four on Gemma, scalar and dim on SmolLM2)")
    ap.add_argument("--train-tokens", type=int, default=24_576, help="training tokens per SAE (the presets train on 100,000)")
    ap.add_argument("--dead-tokens", type=int, help="tokens without firing before AuxK treats a latent as dead (default: the preset's, scaled to the budget)")
    ap.add_argument("--eval-windows", type=int, default=8, help="held-out windows of 256 tokens (FVU and ΔCE on all of them)")
    ap.add_argument("--distances", nargs="*", default=None, help="also group the layers under each distance view, for these models")
    ap.add_argument("--dist-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    if args.distances == []: args.distances = args.models
    print(f"cpu: {cpu_name()}, torch {torch.__version__}, {args.threads} threads")
    out = {"cpu": cpu_name(), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "models": {}}
    for name in args.models:
        r = run_model(name, args); out["models"][name] = r
        print_model(r); sys.stdout.flush()
        if args.json: args.json.write_text(json.dumps(round_sig(out, 4), indent=1) + "\n")

if __name__ == "__main__":
    main()
