"""Activation extraction vs the bare forward of the needed blocks and vs output_hidden_states, side by side.

On SmolLM2 (fp32, CPU) over the same Shakespeare batches, the three variants are interleaved over several
rounds so that machine noise hits all of them; the median time per variant gives tokens/s and the ratios:
  (a) bare: embedding + blocks 0..deepest, no hooks, no copies (the physical floor of extraction)
  (b) ours: groupsae.activations.iter_activations for all 30 layers (hooks, stack, BOS drop, flatten)
  (c) model(..., output_hidden_states=True): the full model, LM head included
Target: (b) at most 10% slower than (a), and faster than (c).
Run: .venv/bin/python bench/bench_extract.py [--rounds 5] [--batches 2]
"""
import argparse, statistics, time
import torch
from groupsae.models import load_model, blocks
from groupsae.data import prepare_data, special_ids
from groupsae.activations import iter_activations

def bare_forward(model, ids, deepest):
    "Embedding and the needed blocks only: the model with its later blocks removed, no hooks."
    base, layers = model.model, model.model.layers
    base.layers = layers[: deepest + 1]
    try:
        with torch.inference_mode(): base(input_ids=ids, use_cache=False)
    finally: base.layers = layers

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5); ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2")
    sp = prepare_data(tok, "shakespeare", 256, 8 * 255 * args.batches, 255, seed=0)
    wins, special, L = sp.train[: 8 * args.batches], special_ids(tok), len(blocks(model))
    n_tok = int(sum(a.shape[1] for a in iter_activations(model, wins, None, 8, special, progress=False)))  # warm-up
    variants = {
        "bare": lambda: [bare_forward(model, wins[i:i + 8], L - 1) for i in range(0, len(wins), 8)],
        "ours": lambda: [a for a in iter_activations(model, wins, None, 8, special, progress=False)],
        "hidden_states": lambda: [model(input_ids=wins[i:i + 8], output_hidden_states=True, use_cache=False)
                                  for i in range(0, len(wins), 8)],
    }
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for r in range(args.rounds):
            for k, f in variants.items():
                t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in variants: print(f"{k:14s} {wins.numel() / med[k]:8.0f} tokens/s (median of {args.rounds}, {wins.numel()} tokens/round)")
    overhead, speedup = med["ours"] / med["bare"] - 1, med["hidden_states"] / med["ours"]
    print(f"kept tokens per round: {n_tok} of {wins.numel()} (BOS excluded)")
    print(f"extract_overhead_vs_bare={overhead:.3f} speedup_vs_hidden_states={speedup:.3f}")

if __name__ == "__main__": main()
