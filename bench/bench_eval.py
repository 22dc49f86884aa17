"""The evaluate stage's cost per (SAE, layer) pair: the previous code against the current one, side by side on the same pairs.

Loads the embedded default (SmolLM2) and its trained SAEs (runs/smollm2-cpu/saes, seed 0: run `groupsae train` first),
takes the per-layer baseline's and Ĝ's SAEs at a few layers, and times, on the same held-out windows and in one run:

  previous   groupsae/evaluate.py as of commit PREV (whole-vocabulary logits, log_softmax and F.kl_div per pair)
  current    this checkout, fp32 blocks (LM head in chunks, the clean side reduced to a constant and p·W per position)
  current16  this checkout, blocks under bf16 autocast (SAEs and the LM head in fp32)
  current16h this checkout, blocks under bf16 autocast and the LM head's product on bf16 operands (eval.head_bf16)

Each runs ΔCE/KL of every pair on every window (plus the reconstruction metrics, which both versions compute the same
way). Prints the profile of one pair (where the time goes), pairs/s and scored positions/s, the ratios, and the largest
difference of ΔCE between versions (current fp32 must equal previous; bf16's bias is printed beside the evaluation's
95% intervals). Run alone on the machine: .venv/bin/python bench/bench_eval.py [--windows 16] [--layers 0 14 28]
"""
import argparse, json, time
import torch
from _common import module_at
PREV = "649f657"   # the last commit before the chunked head (issue 20)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16); ap.add_argument("--layers", type=int, nargs="+", default=[0, 14, 28])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from groupsae.config import get_preset, load_json, results_dir
    from groupsae.activations import study_inputs
    from groupsae import evaluate as cur
    from groupsae.eval_report import eval_plan
    prev = module_at(PREV, "evaluate")
    cfg = get_preset("smollm2-cpu")
    inp = study_inputs(cfg)
    groups = load_json(results_dir(cfg.preset) / "groups.json")
    plan = eval_plan(groups, len(cur.blocks(inp.model)), 1)
    n_grouped, g_hat = len(groups["layers"]), int(groups["G_hat"])
    pairs = sorted({(plan[k]["layers"][l], l) for k in (f"amad/{n_grouped}", f"amad/{g_hat}") for l in args.layers}, key=lambda p: (p[1], p[0]))
    saes = cur.load_saes(sorted({n for n, _ in pairs}), cfg.preset)
    scales = dict(zip(*(load_json(results_dir(cfg.preset) / "scales.json")[k] for k in ("layers", "scales"))))
    wins = cur.eval_windows(inp.split, 10**9, cfg.data.context_len)[: args.windows]
    bs = cfg.eval.batch_size
    print(f"{len(pairs)} pairs at layers {args.layers}, {len(wins)} windows of {wins.shape[1]} tokens, batches of {bs}, {args.threads} threads")

    # where one pair's time goes (one batch, layer 0 and the last claim layer), previous vs current
    ids = wins[:bs]; pos = torch.ones_like(ids, dtype=torch.bool); pos[:, -1] = False
    tg = ids[:, 1:][pos[:, :-1]]
    cp = cur.clean_pass(inp.model, ids)
    clean_logp = cur.unembed(inp.model, cp.resid[-1][pos]).float().log_softmax(-1)
    clean = cur.clean_head(inp.model, cp.resid[-1][pos], tg)
    def t(f, n=2):
        f(); t0 = time.perf_counter()
        for _ in range(n): f()
        return (time.perf_counter() - t0) / n
    for l in (args.layers[0], args.layers[-1]):
        name = next(n for n, ll in pairs if ll == l)
        h = cp.resid[l]
        body = t(lambda: cur.resume(inp.model, h, l, cp.calls, pos))
        body16 = t(lambda: cur.resume(inp.model, h, l, cp.calls, pos, bf16=True))
        hl = cur.resume(inp.model, h, l, cp.calls, pos)
        head_prev = t(lambda: prev.next_token_losses(clean_logp, cur.unembed(inp.model, hl), tg))
        head_cur = t(lambda: cur.head_losses(inp.model, hl, tg, clean))
        rec = t(lambda: cur.reconstruct(saes[name], h.reshape(-1, h.shape[-1]), scales[l]))
        print(f"profile, pair at layer {l:2d}, {len(tg)} positions: blocks after it {body:.2f} s (bf16 {body16:.2f} s), "
              f"LM head + CE + KL previous {head_prev:.2f} s / current {head_cur:.2f} s, SAE encode+decode {rec:.3f} s")

    from groupsae.config import resolve_bf16
    fast, why = resolve_bf16("auto"); print(why)
    arms = [("previous", prev.evaluate, {}), ("current", cur.evaluate, {})] + \
           ([("current16", cur.evaluate, {"bf16": True}), ("current16h", cur.evaluate, {"bf16": True, "head_bf16": True})] if fast else [])
    if not fast: print("current16 (bf16 blocks): skipped, bf16 products are slow on this CPU")
    runs = {}
    for label, fn, kw in arms:
        t0 = time.perf_counter()
        r = fn(inp.model, wins, saes, pairs, scales, inp.special, bs, progress=False, **kw)
        runs[label] = (time.perf_counter() - t0, r)
    n_pos = runs["current"][1].n_ce
    base = runs["previous"][0]
    for label, (sec, r) in runs.items():
        print(f"{label:10s} {sec:7.1f} s  {len(pairs) / sec:.3f} pairs/s  {len(pairs) * n_pos / sec:,.0f} positions/s  "
              f"speedup {base / sec:.2f}x")
    d = lambda a, b, m: max(abs(runs[a][1].pairs[p][m] - runs[b][1].pairs[p][m]) for p in pairs)
    print(f"max |ΔCE% current − previous| = {d('current', 'previous', 'delta_ce'):.2e} points; max |KL| diff = {d('current', 'previous', 'kl'):.2e}")
    if not fast:
        print(f"speedup_eval={base / runs['current'][0]:.2f} speedup_eval_bf16=skipped"); return
    bias = {p: runs["current16"][1].pairs[p]["delta_ce"] - runs["current"][1].pairs[p]["delta_ce"] for p in pairs}
    print("bf16 blocks − fp32, ΔCE points per pair: " + ", ".join(f"{n}@{l} {v:+.3f}" for (n, l), v in bias.items()))
    gh = [bias[(plan[f'amad/{g_hat}']['layers'][l], l)] - bias[(plan[f'amad/{n_grouped}']['layers'][l], l)] for l in args.layers]
    print(f"bf16 bias on the Ĝ − baseline difference, per layer: {', '.join(f'{x:+.3f}' for x in gh)} points")
    ev = results_dir(cfg.preset) / "eval.json"
    p = json.loads(ev.read_text()).get("precision") if ev.exists() else None
    if p: print(f"for scale: the Ĝ − baseline ΔCE 95% interval is ±{(p['diffs']['ghat']['delta_ce']['ci95'][1] - p['diffs']['ghat']['delta_ce']['ci95'][0]) / 2:.3f} points")
    for m in ("delta_ce", "kl"):
        hb = {q: runs["current16h"][1].pairs[q][m] - runs["current16"][1].pairs[q][m] for q in pairs}
        print(f"bf16 head − fp32 head ({m}), per pair: " + ", ".join(f"{n}@{l} {v:+.4f}" for (n, l), v in hb.items()))
        gh = [hb[(plan[f'amad/{g_hat}']['layers'][l], l)] - hb[(plan[f'amad/{n_grouped}']['layers'][l], l)] for l in args.layers]
        print(f"bf16 head's effect on the Ĝ − baseline {m} difference, per layer: {', '.join(f'{x:+.4f}' for x in gh)}")
    print(f"speedup_eval={base / runs['current'][0]:.2f} speedup_eval_bf16={base / runs['current16'][0]:.2f} "
          f"speedup_eval_bf16_head={base / runs['current16h'][0]:.2f}")

if __name__ == "__main__": main()
