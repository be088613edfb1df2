"""``python -m benchmarks.fleet`` (``make bench-fleet``): a fleet of simulated bench servers.

Placement: 10,000 tenants placed on 50 servers through the real request path from one process,
then most of the room left from several processes at once (the server rows' locks), then more
tenants than the fleet has room for, to see it fill exactly. Jobs: a mixed load (create, backup,
delete; zero-second steps) through the workers of 1, 2 and 4 servers, one worker process each, in
turns: jobs/s per server and in all, the queues' depths, PostgreSQL's transactions per job, and
which process's CPU runs out first.

Everything runs on this machine (2 cores here), against the shared PostgreSQL and RabbitMQ, in
databases and queues of its own, all removed afterwards. Absolute figures move 2-4x between runs
on these shared machines: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.fleet_jobs import CORES, JobRound, delete_server_queues, job_round, pooled
from benchmarks.parts import bench
from benchmarks.placing import PlacementRun, make_fleet, placement_run

# The share of the room left after the first run that the concurrent run fills.
CONCURRENT_SHARE = 0.8
# The fill run's tenants beyond the room left: they must all be refused (409).
FILL_EXCESS = 500


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--servers", type=int, default=50, help="servers of the placement fleet (default 50)")
    parser.add_argument("--capacity", type=int, default=250, help="sites each of them takes (default 250)")
    parser.add_argument("--tenants", type=int, default=10_000, help="tenants placed from one process (default 10,000)")
    parser.add_argument("--processes", type=int, default=4, help="placing processes of the concurrent runs (default 4)")
    parser.add_argument("--job-servers", type=int, nargs="+", default=[1, 2, 4], help="servers of each job round")
    parser.add_argument("--jobs-per-server", type=int, default=150, help="jobs of each server in a turn (default 150)")
    parser.add_argument("--turns", type=int, default=2, help="turns of each round, in the order 1 2 4 4 2 1 ... (default 2)")
    parser.add_argument("--concurrency", type=int, default=1, help="prefork processes of each worker (default 1)")
    parser.add_argument("--out", type=Path, default=Path("var/bench"), help="directory for the JSON results")
    args = parser.parse_args()

    placements = placement_runs(args.servers, args.capacity, args.tenants, args.processes)
    turns = job_turns(args.job_servers, args.jobs_per_server, args.concurrency, args.turns)
    rounds = [pooled([turn for turn in turns if len(turn.servers) == count]) for count in args.job_servers]
    print(placement_table(placements))
    print()
    print(jobs_table(rounds))
    print()
    print(cpu_table(rounds))
    print(f"\n{CORES} cores; absolute figures move 2-4x between runs on these shared machines: compare within one run.")
    args.out.mkdir(parents=True, exist_ok=True)
    when = datetime.now(timezone.utc)
    path = args.out / f"fleet-{when:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({
        "at": when.isoformat(), "machine": platform.node(), "cores": CORES, "arguments": vars(args) | {"out": str(args.out)},
        "placement": [asdict(run) | {"per_second": run.per_second} for run in placements],
        "jobs": [figures(round_) for round_ in rounds], "turns": [figures(turn) for turn in turns],
    }, indent=2))  # fmt: skip
    print(f"written to {path}")
    return 0


def placement_runs(servers: int, capacity: int, tenants: int, processes: int) -> list[PlacementRun]:
    """On one fleet: ``tenants`` placed from one process; then from ``processes`` at once, most of
    the room left (``CONCURRENT_SHARE``: the server rows' locks); then ``FILL_EXCESS`` more
    tenants than there is room for, which must fill every server exactly and be refused."""
    with bench("fleet-place") as stack:
        make_fleet(stack, servers, capacity)
        say(f"placing {tenants:,} tenants on {servers} servers from one process")
        runs = [placement_run(stack, "one process", tenants, 1, capacity)]
        room = servers * capacity - tenants
        concurrent = int(room * CONCURRENT_SHARE)
        say(f"placing {concurrent:,} more from {processes} processes at once")
        runs.append(placement_run(stack, f"{processes} processes at once", concurrent, processes, capacity))
        fill = room - concurrent + FILL_EXCESS
        say(f"placing {fill:,} more from {processes} processes, for {room - concurrent:,} places left")
        runs.append(placement_run(stack, f"filling the fleet, {processes} processes", fill, processes, capacity))
    return runs


def job_turns(server_counts: list[int], jobs_per_server: int, concurrency: int, turns: int) -> list[JobRound]:
    """A turn of each count of servers, in the order given, then reversed, and so on, on one
    database whose servers are the largest count's: the pace of a shared machine drifts within a
    run, and alternating spreads the drift over every count instead of charging it to the last."""
    names = [f"s{n:02d}" for n in range(1, max(server_counts) + 1)]
    order = [count for turn in range(turns) for count in (server_counts if turn % 2 == 0 else server_counts[::-1])]
    with bench("fleet-jobs") as stack:
        try:
            make_fleet(stack, len(names), capacity=turns * len(server_counts) * jobs_per_server)
            done = []
            for count in order:
                say(f"{count * jobs_per_server:,} jobs through the workers of {count} server(s)")
                done.append(job_round(stack, names[:count], jobs_per_server, concurrency))
            return done
        finally:
            delete_server_queues(stack, names)


def figures(round_: JobRound) -> dict:
    """A round as JSON: its fields and the figures made from them."""
    return asdict(round_) | {"per_second": round_.per_second, "per_server": round_.per_server, "cores": round_.cores}


def say(what: str) -> None:
    """Progress, on stderr: the run takes minutes."""
    print(f"{datetime.now(timezone.utc):%H:%M:%S} {what}", file=sys.stderr, flush=True)


def placement_table(runs: list[PlacementRun]) -> str:
    headers = ["placement run", "tenants", "seconds", "requests/s", "p50 / p99 ms", "409s", "lock waits",
               "CPU ms per request: placer / PostgreSQL", "sites per server min / max (capacity)", "over capacity",
               "miscounted", "lost"]  # fmt: skip
    return markdown(headers, [
        [run.name, f"{run.tenants:,}", f"{run.seconds:.1f}", f"{run.per_second:.0f}", f"{run.p50_ms:.1f} / {run.p99_ms:.1f}",
         str(run.conflicts), f"{run.lock_wait_share:.0%}", f"{run.client_cpu_ms:.1f} / {run.postgres_cpu_ms:.1f}",
         f"{run.min_sites} / {run.max_sites} ({run.capacity})", str(run.over_capacity), str(run.miscounted),
         str(run.unaccounted)]
        for run in runs
    ])  # fmt: skip


def jobs_table(rounds: list[JobRound]) -> str:
    headers = ["servers (worker processes)", "jobs", "seconds (publishing)", "jobs/s in all (each turn)", "jobs/s per server",
               "deepest queue per server", "dead letters", "failed", "transactions per job"]  # fmt: skip
    rows = []
    for round_ in rounds:
        job_queues = [depth for queue, depth in round_.max_depths.items() if not queue.endswith(".dead")]
        dead = sum(depth for queue, depth in round_.max_depths.items() if queue.endswith(".dead"))
        rows.append([
            f"{len(round_.servers)} ({len(round_.servers)} × {round_.concurrency})", f"{round_.jobs:,}",
            f"{round_.seconds:.1f} ({round_.publish_seconds:.1f})",
            f"{round_.per_second:.0f} ({' / '.join(f'{rate:.0f}' for rate in round_.turns)})",
            " / ".join(f"{rate:.0f}" for rate in round_.per_server.values()),
            " / ".join(str(depth) for depth in job_queues), str(dead), str(round_.failed),
            f"{round_.transactions / round_.jobs:.1f}",
        ])  # fmt: skip
    return markdown(headers, rows)


def cpu_table(rounds: list[JobRound]) -> str:
    """Cores kept busy by each part: the limit is a process near 1.0 (one core), or the machine
    near its cores; and what a job cost in CPU, which the machine's load moves less."""
    headers = ["servers", "worker pools", "worker parents", "sweeper", "publisher", "PostgreSQL, ours (busiest backend)",
               "RabbitMQ", "others (of them, processes seen here)", f"machine (of {CORES})", "busiest process",
               "CPU ms per job: workers / PostgreSQL / RabbitMQ"]  # fmt: skip
    rows = []
    for round_ in rounds:
        cores = round_.cores
        name, busiest = round_.busiest
        others = ", ".join(f"{other} {value:.2f}" for other, value in round_.others.items() if value >= 0.01) or "none here"
        rows.append([
            str(len(round_.servers)), f"{part(cores, ' pool '):.2f}", f"{part(cores, ' parent'):.2f}",
            f"{cores['sweeper']:.2f}", f"{cores['process publisher (this benchmark)']:.2f}",
            f"{cores['postgres ours']:.2f} ({cores['process postgres backend (busiest)']:.2f})", f"{cores['rabbitmq']:.2f}",
            f"{cores['others'] + cores['postgres rest']:.2f} ({others})", f"{cores['machine']:.2f}",
            f"{name.removeprefix('process ')} {busiest:.2f}",
            f"{round_.cpu_per_job('process worker'):.1f} / {round_.cpu_per_job('postgres ours'):.1f} / "
            f"{round_.cpu_per_job('rabbitmq'):.1f}",
        ])  # fmt: skip
    return markdown(headers, rows)


def part(cores: dict[str, float], marker: str) -> float:
    """The cores of every process whose part's name contains ``marker``."""
    return sum(value for name, value in cores.items() if marker in name)


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


if __name__ == "__main__":
    sys.exit(main())
