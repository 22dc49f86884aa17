"""The `cuda` path at Pythia size: extraction throughput and SAE training tokens/s, on a GPU when there is one.

A random-initialised Pythia model built from the published config (no weights or hub access needed: the
speed of a forward does not depend on the weights' values) runs over random token windows of the paper's
context length. Side by side in one run:
  (a) extraction: groupsae.activations.iter_activations for every layer vs output_hidden_states (full model);
  (b) training: the per-layer suite (one SAE per layer, paper sizes: expansion 16, k 128) and the published
      G-hat suite (one SAE per group, plus the last layer's own) with groupsae's Trainer, from one forward per
      batch; tokens/s per suite, the model forward and the SAE steps per batch (CUDA events, no host syncs
      inside the loop), and the suite's wall-time saving next to the cost model's prediction.
Paper batch sizes are 131,072 tokens (160M), 65,536 (410M), 32,768 (1B): `--windows` sets the number of
1024-token windows per batch. On a CPU it runs as a smoke test with small sizes (`--device cpu`).
Run (GPU): .venv/bin/python bench/bench_gpu.py --size 160m --windows 128 [--bf16]
Run (CPU smoke): .venv/bin/python bench/bench_gpu.py --device cpu --size 70m --windows 2 --ctx 128 --steps 2 --expansion 2
Last line: gpu_train_tokens_per_s=X gpu_extract_tokens_per_s=Y saving_measured=Z saving_model=W
"""
import argparse, time
import torch
from groupsae.activations import iter_activations
from groupsae.config import SAEConfig, TrainConfig
from groupsae.flops import paper_costs
from groupsae.grouping import even_groups
from groupsae.paper import PUBLISHED_PARTITIONS
from groupsae.models import pythia_config, random_model
from groupsae.study import SAESpec, group_name
from groupsae.train import Trainer

def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()

def extraction(model, windows, device, batch, rounds=3):
    "Tokens/s of iter_activations (every layer) and of output_hidden_states, interleaved over `rounds`."
    t = {"ours": 0.0, "hidden_states": 0.0}
    for r in range(rounds + 1):                      # round 0 warms up kernels and allocators
        sync(device); t0 = time.perf_counter()
        for _ in iter_activations(model, windows, None, batch, progress=False): pass
        sync(device); dt_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(windows), batch): model(input_ids=windows[i:i + batch].to(device), output_hidden_states=True)
        sync(device); dt_hs = time.perf_counter() - t0
        if r: t["ours"] += dt_ours; t["hidden_states"] += dt_hs
    return {k: windows.numel() * rounds / v for k, v in t.items()}

def train_suite(model, windows, specs, d_model, device, batch, steps, bf16):
    "Tokens/s of one suite over `steps` batches after one warm-up batch; forward and SAE seconds per batch."
    scales = {l: 1.0 for s in specs for l in s.layers}
    tr = Trainer(specs, d_model, scales, SAEConfig(expansion=16, k=specs[0].k), TrainConfig(bf16=bf16), device=device)
    it = iter_activations(model, windows, tr.layers, batch, progress=False)
    tr.step(tr.next_batch(it)); tr.log(); sync(device)       # warm-up: b_dec init, kernels, allocators
    fwd0, sae0 = tr.model_s, sum(tr.clock.read())
    t0 = time.perf_counter()
    for _ in range(steps): tr.step(tr.next_batch(it))
    tr.log(); sync(device)                                     # the loop's only host sync
    dt = time.perf_counter() - t0
    return dict(tokens_per_s=steps * batch * windows.shape[1] / dt, s_per_batch=dt / steps,
                forward_s=(tr.model_s - fwd0) / steps, saes_s=(sum(tr.clock.read()) - sae0) / steps)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="160m", choices=["70m", "160m", "410m", "1b"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--windows", type=int, default=128, help="1024-token windows per batch (128 = the paper's 131,072 tokens)")
    ap.add_argument("--ctx", type=int, default=1024); ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--expansion", type=int, default=16); ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--bf16", action="store_true", help="bf16 SAE products (train.bf16)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = pythia_config(args.size)
    model = random_model(cfg, seed=0, device=device)
    L, d = cfg.num_hidden_layers, cfg.hidden_size
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, cfg.vocab_size, ((args.steps + 1) * args.windows, args.ctx), generator=g)
    d_sae = args.expansion * d
    per_layer = [SAESpec(group_name([l]), (l,), d_sae, args.k) for l in range(L)]
    published = PUBLISHED_PARTITIONS.get(f"pythia-{args.size}")      # (n_layers, G-hat, AMAD, groups); none for 70m
    groups = published[3] if published else even_groups(L - 1, L // 2)   # pairs of layers
    grouped = [SAESpec(group_name(gr), tuple(gr), d_sae, args.k) for gr in groups] + [per_layer[-1]]
    print(f"pythia-{args.size} (random weights) on {device}: {L} layers, d_model {d}, d_sae {d_sae}, k {args.k}, "
          f"batch {args.windows} x {args.ctx} tokens, {'bf16' if args.bf16 else 'fp32'} SAE products", flush=True)
    ex = extraction(model, windows[: 2 * args.windows], device, args.windows)
    print(f"extraction (all {L} layers): ours {ex['ours']:,.0f} tokens/s, output_hidden_states {ex['hidden_states']:,.0f} "
          f"tokens/s: ours {ex['ours'] / ex['hidden_states']:.2f}x", flush=True)
    res = {}
    for name, specs in (("per-layer", per_layer), ("G-hat", grouped)):
        res[name] = r = train_suite(model, windows, specs, d, device, args.windows, args.steps, args.bf16)
        print(f"{name:9s} suite: {len(specs)} SAEs, {r['tokens_per_s']:,.0f} tokens/s; per batch {r['s_per_batch']:.3f} s "
              f"(forward {r['forward_s']:.3f} s, SAE steps {r['saes_s']:.3f} s)", flush=True)
        if device.type == "cuda": torch.cuda.empty_cache()
    costs = paper_costs(f"pythia-{args.size}", n_tokens=10**9, expansion=args.expansion)
    A, T = costs["A"], costs["T"]
    model_saving = 1 - (A + len(grouped) * T) / (A + L * T)
    measured = 1 - res["G-hat"]["s_per_batch"] / res["per-layer"]["s_per_batch"]
    print(f"G-hat suite saving: measured {measured:.1%}, cost model A + (G+1)T vs A + LT {model_saving:.1%}")
    print(f"gpu_train_tokens_per_s={res['per-layer']['tokens_per_s']:.0f} gpu_extract_tokens_per_s={ex['ours']:.0f} "
          f"saving_measured={measured:.3f} saving_model={model_saving:.3f}")

if __name__ == "__main__": main()
