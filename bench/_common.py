"""Helpers the benchmarks share: a module of groupsae as of an earlier commit, and SAE-shaped synthetic batches."""
import subprocess, types
from pathlib import Path
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

def module_at(rev:str, name:str):
    "groupsae.<name> as of commit `rev`, imported beside the current one (its relative imports resolve in the installed package)."
    src = subprocess.run(["git", "show", f"{rev}:groupsae/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(f"groupsae._{name}_previous"); mod.__package__ = "groupsae"
    exec(compile(src, f"{name}.py@{rev}", "exec"), mod.__dict__)
    return mod

def synthetic_batches(n_batches:int, n:int, d:int, seed:int=0) -> list:
    "[n, d] activations with a sparse-dictionary structure, a shared offset and noise, mean norm 1 (like scaled residual streams)."
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(4 * d, d, generator=g), dim=1)
    out = []
    for _ in range(n_batches):
        z = (torch.rand(n, 4 * d, generator=g) < 0.01) * torch.rand(n, 4 * d, generator=g)
        x = z @ dirs + 0.05 * torch.randn(n, d, generator=g) + 0.3 * dirs[0]
        out.append(x / x.norm(dim=1, keepdim=True).mean())
    return out
