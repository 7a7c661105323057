"""``collector export`` in each format on 2,000 leases: whole processes.

The store is bench/bench_admission.py's (500 leased 8-GPU nodes each leased four times in a
row, 2,000 leases from a year ago to a year ahead, 50 tenants in a tree of three levels of
cohorts with GPU quotas and borrowing limits, 40 spare nodes). Timed: ``collector export``
with ``--format toml`` (the baseline), ``kueue`` and ``slurm``, each written to a file
(``-o``), and the size of what each writes.

Usage: ``.venv/bin/python bench/bench_export.py [--db PATH] [--runs 9]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_admission import _line, _time, build_store

__all__ = ["main"]

BIN = Path(sys.executable).parent


def main() -> None:
    """Build the store, then time each format."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", type=Path, default=Path("/tmp/capwatch-bench-export.db"))
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    for suffix in ("", "-wal", "-shm"):
        Path(str(args.db) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    build_store(args.db)
    print(f"built {args.db}: 2,000 leases, 50 tenants in {time.perf_counter() - t0:.1f} s")
    collector = str(BIN / "collector")
    for fmt in ("toml", "kueue", "slurm"):
        out = args.db.with_suffix(f".{fmt}.out")
        cmd = [collector, "export", "--db", str(args.db), "--format", fmt, "-o", str(out)]
        _time([cmd])  # warm-up: page cache, bytecode
        times = _time([cmd] * args.runs)
        lines = out.read_text().count("\n")
        print(_line(f"export --format {fmt}", times) + f"  {lines} lines")


if __name__ == "__main__":
    main()
