"""The SAE training step with and without a competing process, for OpenMP's two wait policies and 1 or 2 threads.

Issue: beside a second busy PyTorch process (even at nice 19) the train step of the embedded default slowed about six-fold
on 2 cores, not two-fold. Suspect: OpenMP threads spin while they wait for a descheduled sibling at the end of every
parallel region. Each configuration runs in a fresh process (OMP_WAIT_POLICY is read when the OpenMP runtime loads):
the step of 4 TopK SAEs (d_model 576, 4x, k 32, batches of 2,048 tokens: the smollm2-cpu preset's shape; bf16 products
where `resolve_bf16("auto")` finds them fast on this CPU, as the preset does, fp32 elsewhere)
timed alone, then beside a competitor (another PyTorch process doing 2-thread matmuls), at nice 19 and at nice 0.
Prints ms per SAE step for each, and the slowdown ratio loaded/alone. Run alone on the machine:
.venv/bin/python bench/bench_contention.py [--seconds 12]
"""
import argparse, os, subprocess, sys, time
STEP = r'''
import os, sys, time, torch
from groupsae.sae import TopKSAE
from groupsae.config import use_bf16
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
saes = [TopKSAE(576, 2304, 32, seed=i) for i in range(4)]
opts = [torch.optim.Adam(s.parameters(), lr=1e-3) for s in saes]
x = torch.randn(2048, 576)
BF16 = use_bf16("auto")
def step():
    for s, o in zip(saes, opts):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16): out = s(x)
        out.loss.backward(); o.step(); o.zero_grad(set_to_none=True)
step(); step()
t0, n = time.perf_counter(), 0
while time.perf_counter() - t0 < float(sys.argv[2]): step(); n += 1
print((time.perf_counter() - t0) / n / len(saes) * 1000)
'''
LOAD = r'''
import torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True: a = torch.tanh(a @ a) 
'''

def step_ms(threads, policy, seconds, nice=None):
    "ms per SAE step in a fresh process; beside a competitor at niceness `nice` (None: alone)."
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    comp = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", LOAD], env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}) if nice is not None else None
    try:
        if comp: time.sleep(2)   # let the competitor start computing
        out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(seconds)], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        if comp: comp.kill(); comp.wait()

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12)
    args = ap.parse_args()
    res = {}
    for threads, policy in ((2, "ACTIVE"), (2, "PASSIVE"), (1, "PASSIVE")):
        alone, n19, n0 = (step_ms(threads, policy, args.seconds, n) for n in (None, 19, 0))
        res[(threads, policy)] = (alone, n19, n0)
        print(f"threads={threads} OMP_WAIT_POLICY={policy:7s} alone {alone:6.1f} ms/SAE step  beside a competitor at nice 19 {n19:7.1f} ms "
              f"({n19 / alone:.2f}x), at nice 0 {n0:7.1f} ms ({n0 / alone:.2f}x)")
    a, p = res[(2, "ACTIVE")], res[(2, "PASSIVE")]
    print(f"contention_slowdown_active={a[2] / a[0]:.2f} contention_slowdown_passive={p[2] / p[0]:.2f} "
          f"contention_slowdown_nice19_active={a[1] / a[0]:.2f} passive_cost_alone={p[0] / a[0]:.2f}")

if __name__ == "__main__": main()
