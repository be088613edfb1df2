"""``make bench``: every figure beside its baseline, as a table and as JSON.

Small sizes by default (a few minutes); ``--full`` uses the issue's sizes (1,000,000 rows,
10,000 jobs), which take much longer.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import figures
from benchmarks.figures import Figure

SIZES = {
    "small": {"rows": 100_000, "jobs": 1_500, "memory_jobs": 2_000, "samples": 200, "seconds": 9, "tenants": 20_000},
    "full": {"rows": 1_000_000, "jobs": 3_000, "memory_jobs": 10_000, "samples": 200, "seconds": 15, "tenants": 40_000},
}
FIGURES = ["create", "read", "worker", "dispatch", "scale", "memory"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--full", action="store_true", help="the issue's sizes: 1,000,000 rows and 10,000 jobs")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=FIGURES, metavar="FIGURE",
                        help=f"measure only these: {', '.join(FIGURES)} (default: all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("var/bench"), help="directory for the JSON results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (make bench does)")
    size = SIZES["full" if args.full else "small"]

    rows: list[Figure] = []
    if "create" in args.only:
        rows += figures.create_throughput(size["seconds"], size["tenants"])
    if "read" in args.only:
        rows += figures.read_latency(5, size["rows"])
    if {"worker", "scale"} & set(args.only):
        worker = figures.worker_throughputs(size["jobs"], bare="worker" in args.only,
                                            full_rows=size["rows"] if "scale" in args.only else 0)  # fmt: skip
        rate = worker.jobs_per_second
    if "worker" in args.only:
        rows.append(Figure("worker throughput", "jobs/s", rate["ours"], rate["bare"], ">= 0.3x (0.5x stretch)",
                           rate["ours"] >= 0.3 * rate["bare"], f"{worker.commits_per_job:.1f} commits per job"))  # fmt: skip
        rows.append(figures.cpu_figure("worker CPU per job", worker.cpu_per_job["ours"], worker.cpu_per_job["bare"]))
    if "dispatch" in args.only:
        rows += figures.dispatch_latency(size["samples"])
    if "scale" in args.only:
        rows.append(Figure(f"worker throughput, {size['rows']:,} rows", "jobs/s", rate["full"], rate["ours"], ">= 0.9x",
                           rate["full"] >= 0.9 * rate["ours"], "baseline: the same with an empty table"))  # fmt: skip
    if "memory" in args.only:
        rows += figures.memory(size["memory_jobs"])

    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    when = datetime.now(timezone.utc)
    path = args.out / f"bench-{when:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({
        "at": when.isoformat(), "size": "full" if args.full else "small", "machine": platform.node(),
        "figures": [asdict(row) | {"ratio": row.ratio} for row in rows],
    }, indent=2))  # fmt: skip
    print(f"\nwritten to {path}")
    return 0


def table(rows: list[Figure]) -> str:
    header = f"{'figure':<34} {'ours':>10} {'baseline':>10} {'unit':<7} {'ratio':>6}  {'target':<24} {'met':<4} note"
    lines = [header, "-" * len(header)]
    for row in rows:
        baseline = f"{row.baseline:10.1f}" if row.baseline is not None else f"{'':>10}"
        ratio = f"{row.ratio:6.2f}" if row.ratio is not None else f"{'':>6}"
        met = "yes" if row.met else "NO"
        lines.append(f"{row.name:<34} {row.ours:10.1f} {baseline} {row.unit:<7} {ratio}  {row.target:<24} {met:<4} {row.note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
