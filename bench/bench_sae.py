"""TopK SAE training step: groupsae vs EleutherAI sparsify, side by side on the same activations.

Configuration (DESIGN.md): CPU, d_model 576, expansion 16 (d_sae 9216), k 32, batch 4096, fp32 parameters,
Adam with the paper's learning rate, decoder unit-norm with parallel-gradient removal. Both SAEs start from the
same weights and see the same batches; steps alternate between them so machine noise hits both. Ours runs
twice: exact fp32 products, and bf16 products on the CPU's matrix units (parameters and Adam stay fp32).
Also prints the step's achieved FLOP/s against this machine's measured matmul FLOP/s (the physical limit:
one dense encoder product, 2*d_model*d_sae FLOPs per token).
The bf16 arm runs only where `groupsae.config.resolve_bf16("auto")` finds bf16 products fast on this CPU (on an
AVX2-only CPU torch emulates them 50-80x slower than fp32, and the arm alone would take most of an hour); elsewhere it
is skipped with a line saying why (`--bf16 on` forces it, capped to 3 steps).
Last line: speedup_vs_sparsify=X fvu_ours=Y fvu_sparsify=Z  (the fastest of our modes whose FVU is within 2%).
Run: .venv/bin/python bench/bench_sae.py [--steps 30] [--bf16 auto|on|off]
"""
import argparse, math, time
import torch
from groupsae.sae import TopKSAE
from _common import synthetic_batches

D, EXP, K, BATCH = 576, 16, 32, 4096

def ours_step(sae, opt, x):
    out = sae(x)
    out.loss.backward()
    sae.remove_parallel_grad_()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True); sae.unit_norm_decoder_()
    return out.fvu

def sparsify_step(sc, opt, x):
    out = sc(x)
    out.fvu.backward()
    sc.remove_gradient_parallel_to_decoder_directions()
    torch.nn.utils.clip_grad_norm_(sc.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True); sc.set_decoder_norm_to_unit_norm()
    return out.fvu

def matmul_flops(dtype, reps=3):
    a, b = torch.randn(BATCH, D, dtype=dtype), torch.randn(D * EXP, D, dtype=dtype)
    a @ b.T; t0 = time.perf_counter()
    for _ in range(reps): a @ b.T
    return 2 * BATCH * D * D * EXP * reps / (time.perf_counter() - t0)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="the bf16 arm: where the probe finds it fast (auto), always, never")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sparsify import SparseCoder, SparseCoderConfig
    batches = synthetic_batches(args.steps, BATCH, D)
    d_sae = D * EXP
    lr = 2e-4 / math.sqrt(d_sae / 2**14)
    ref = TopKSAE(D, d_sae, K, seed=0); ref.init_b_dec_(batches[0][:1024])
    from groupsae.config import resolve_bf16
    fast, why = resolve_bf16("auto")
    print(why)
    modes = [("ours_fp32", None)] + ([("ours_bf16", torch.bfloat16)] if args.bf16 == "on" or (args.bf16 == "auto" and fast) else [])
    if len(modes) == 1: print("ours_bf16: skipped (" + ("--bf16 off" if args.bf16 == "off" else "bf16 products are slow on this CPU") + ")")
    elif not fast: batches = batches[:3]; print("ours_bf16: forced on a CPU where it is slow: capped to 3 steps")
    saes = {}
    for name, cd in modes:
        s = TopKSAE(D, d_sae, K, compute_dtype=cd); s.load_state_dict(ref.state_dict())
        saes[name] = (s, torch.optim.Adam(s.parameters(), lr=lr, fused=True), ours_step)
    sc = SparseCoder(D, SparseCoderConfig(num_latents=d_sae, k=K), device="cpu")
    with torch.no_grad():
        sc.encoder.weight.copy_(ref.W_enc); sc.encoder.bias.copy_(ref.b_enc); sc.W_dec.copy_(ref.W_dec); sc.b_dec.copy_(ref.b_dec)
    saes["sparsify"] = (sc, torch.optim.Adam(sc.parameters(), lr=lr), sparsify_step)
    times = {n: 0.0 for n in saes}; last = {}
    for i, x in enumerate(batches):
        for n, (m, opt, step) in saes.items():
            t0 = time.perf_counter(); f = step(m, opt, x); dt = time.perf_counter() - t0
            if i > 0: times[n] += dt          # the first step warms up allocators
            if i >= len(batches) - 5: last.setdefault(n, []).append(f.item())
    toks = BATCH * (len(batches) - 1)
    fvu = {n: sum(v) / len(v) for n, v in last.items()}
    peak = {"fp32": matmul_flops(torch.float32), **({"bf16": matmul_flops(torch.bfloat16)} if "ours_bf16" in saes else {})}
    print(f"steps={args.steps} batch={BATCH} d_model={D} d_sae={d_sae} k={K} threads={args.threads}")
    for n in saes:
        print(f"{n:10s} {toks / times[n]:8.0f} tokens/s  fvu(last 5 steps)={fvu[n]:.4f}")
    for n, p in (("ours_fp32", "fp32"), ("ours_bf16", "bf16")):
        if n not in saes: continue
        achieved = 2 * D * d_sae * toks / times[n]
        print(f"{n}: {achieved / 1e9:.1f} GFLOP/s of encoder-equivalent work = {achieved / peak[p]:.2f} of {p} matmul "
              f"({peak[p] / 1e9:.0f} GFLOP/s measured)")
    ok = [n for n in ("ours_bf16", "ours_fp32") if n in saes and abs(fvu[n] - fvu["sparsify"]) <= 0.02 * fvu["sparsify"]]
    best = min(ok, key=lambda n: times[n]) if ok else "ours_fp32"
    print(f"reported mode: {best}" + ("" if ok else " (no mode within 2% FVU)"))
    print(f"speedup_vs_sparsify={times['sparsify'] / times[best]:.2f} fvu_ours={fvu[best]:.4f} fvu_sparsify={fvu['sparsify']:.4f}")

if __name__ == "__main__": main()
