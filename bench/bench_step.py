"""The SAE training step at the embedded default's sizes: the previous backward against the current one, side by side.

Issue 26 made the step faster where it was slowest, on a CPU without bf16 matrix units: the weight gradients of the
encoder and the decoder became one CSR product with the sparse code each (`sae.sparse_grad`) instead of an
`index_add_` of [n, k, d_model] products and the embedding bag's own backward, and AuxK became dense products over
the dead latents instead of a gather of k_aux decoder rows per token. This bench runs the two versions of
groupsae/sae.py (the previous one as of commit PREV, imported beside the current one) on the same real-shaped
batches, steps interleaved so machine noise hits both, at the study's sizes (2,040 tokens, d_model 576, d_sae 2,304,
k 32), without AuxK and with 10% of the latents dead, in fp32 and, where `resolve_bf16("auto")` finds bf16 fast, with
bf16 forward products. Prints ms per step, the ratio previous/current and the FVU of both after the same steps.
Run alone on the machine: .venv/bin/python bench/bench_step.py [--steps 12]
To emulate a CPU without native bf16 on one that has it, cap the instruction sets first:
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python bench/bench_step.py
"""
import argparse, time
import torch
from groupsae.sae import TopKSAE
from groupsae.config import resolve_bf16
from _common import module_at, synthetic_batches
PREV = "5a33fce"   # the last commit before the CSR weight gradients (issue 26)
N, D, D_SAE, K = 2040, 576, 2304, 32

def step(sae, opt, x, dead):
    out = sae(x, dead_mask=dead)
    out.loss.backward(); sae.remove_parallel_grad_()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True); sae.unit_norm_decoder_()
    return out.fvu.item()

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12); ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fast, why = resolve_bf16("auto"); print(why)
    prev, xs = module_at(PREV, "sae"), synthetic_batches(args.steps, N, D)
    dead = torch.zeros(D_SAE, dtype=torch.bool); dead[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))[:D_SAE // 10]] = True
    dtypes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if fast else [])
    if not fast: print("bf16: skipped (bf16 products are slow on this CPU)")
    print(f"steps={args.steps} n={N} d_model={D} d_sae={D_SAE} k={K} threads={args.threads}")
    for label, cd in dtypes:
        for auxk, mask in (("no AuxK", None), ("10% dead (AuxK)", dead)):
            arms = {}
            for name, cls in (("previous", prev.TopKSAE), ("current", TopKSAE)):
                s = cls(D, D_SAE, K, compute_dtype=cd, seed=0); s.init_b_dec_(xs[0][:1024])
                arms[name] = (s, torch.optim.Adam(s.parameters(), lr=1e-3))
            secs, fvu = dict.fromkeys(arms, 0.0), {}
            for i, x in enumerate(xs):
                for name, (s, opt) in arms.items():
                    t0 = time.perf_counter(); fvu[name] = step(s, opt, x, mask); dt = time.perf_counter() - t0
                    if i > 0: secs[name] += dt    # the first step warms up allocators
            ms = {n: 1000 * v / (len(xs) - 1) for n, v in secs.items()}
            print(f"{label} {auxk:16s} previous {ms['previous']:6.1f} ms  current {ms['current']:6.1f} ms  "
                  f"ratio {ms['previous'] / ms['current']:.2f}x  fvu {fvu['previous']:.4f} vs {fvu['current']:.4f}")

if __name__ == "__main__": main()
