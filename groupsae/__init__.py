__version__ = "0.1.0"

# Before anything imports torch: OpenMP threads that finish a parallel region early sleep instead of spinning, so a
# second busy process on the same cores slows groupsae ~2x rather than ~6x (12_cli, bench/bench_contention.py).
# The user's own setting wins.
import os as _os
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
