"""The benchmark runner: `python -m bench.run [--quick] [--idle N] [--json FILE]`.

How this works: it raises the open-files limit, starts what it measures (bench.services:
a private Dovecot sized for the IDLE run; ../shared/bench's Dovecot on 14143 and its
peers when that directory exists, else the private Dovecot and an asyncio relay; the
proxy as its own process, once with the default rules and once with an empty rules
directory), fills the mailboxes once, then runs each workload (bench.workloads) against
every target in the same run, interleaving targets pass by pass so machine noise is
shared. IDLE runs against the private Dovecot through a fresh proxy and relay process,
so their memory is the sessions' alone. It prints the figures, the ratios and the
targets (bench.report), writes them as JSON with --json, and stops what it started.
Every loop is bounded in count and in time; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads
from bench.report import NO_RULES, PROXY, SPARE_COUNT, SPARES, TRIO_RELAY, full_report
from bench.services import (
    DEFAULT_SHARED,
    REPO_ROOT,
    Services,
    Target,
    cpu_seconds,
    group_rss_pss_kb,
    raise_fd_limit,
    rss_pss_kb,
    run_directory,
)

WORKLOADS = ("fetch", "small", "logins", "mixed", "idle")
FD_RESERVE = 100


def source_version(source: Path) -> str:
    """The commit of the benchmarked source (a COMMIT file, or git), marked if modified."""
    commit_file = source / "COMMIT"
    if commit_file.exists():
        return commit_file.read_text().strip()[:12] + " (snapshot)"
    found = subprocess.run(
        ["git", "-C", str(source), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "unknown"


@dataclass(frozen=True, slots=True)
class Sizes:
    fetch_count: int
    fetch_size: int
    fetch_runs: int
    small_rounds: int
    logins: int
    passes: int
    mixed_clients: int
    mixed_ops: int
    mixed_messages: int
    idle: int
    time_limit: float  # per target, per workload pass
    rules_passes: int  # extra alternating mixed passes, proxy with and without rules


QUICK = Sizes(10, 2_000_000, 2, 150, 40, 1, 4, 120, 40, 200, 8.0, 1)
FULL = Sizes(20, 10_000_000, 3, 700, 200, 2, 8, 300, 100, 2000, 60.0, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark imap-proxy against direct Dovecot, a plain relay and peer proxies.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument(
        "--idle", type=int, help="concurrent IDLE sessions (default 2000; quick 200)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="../shared/bench")
    parser.add_argument("--no-shared", action="store_true", help="ignore ../shared/bench")
    parser.add_argument("--keep", action="store_true", help="keep configs and proxy logs")
    parser.add_argument(
        "--proxy-src",
        type=Path,
        default=REPO_ROOT,
        help="directory whose imap_proxy package is benchmarked (default: this checkout)",
    )
    args = parser.parse_args(argv)
    args.only = [name for name in args.only.split(",") if name]
    unknown = set(args.only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.idle is not None and not 1 <= args.idle <= 10_000:
        parser.error("--idle takes 1 to 10000")
    return args


class Runner:
    def __init__(self, services: Services, sizes: Sizes, only: list[str]) -> None:
        self.services = services
        self.sizes = sizes
        self.only = only
        self.figures: dict[str, dict[str, dict[str, float]]] = {}
        self.order: list[str] = []
        self.services_targets: list[Target] = []
        self.spares: Target | None = None

    def say(self, text: str) -> None:
        self.services.say(text)

    def record(self, workload: str, target: str, figures: dict[str, float]) -> None:
        self.figures.setdefault(workload, {})[target] = figures
        if target not in self.order:
            self.order.append(target)

    @staticmethod
    def cpu_of(target: Target) -> Callable[[], float] | None:
        if target.pid is None or target.name == "direct":
            return None
        pid = target.pid
        return lambda: cpu_seconds(pid)

    # -------------------------------------------------------------- main workloads
    def main_workloads(self, direct: Target, targets: list[Target], norules: Target) -> None:
        sizes = self.sizes
        if "fetch" in self.only:
            mailbox = f"bench-fetch-{sizes.fetch_count}x{sizes.fetch_size}"
            spent = workloads.prepare_mailbox(
                direct, "user1", mailbox, sizes.fetch_count, sizes.fetch_size
            )
            self.say(f"fetch mailbox {mailbox} ready ({spent:.1f} s)")
            runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
            for target in targets:  # warm-up: first connections, caches, not counted
                workloads.fetch_throughput(target, "user1", mailbox)
            for run in range(sizes.fetch_runs):
                for target in targets:
                    result = workloads.fetch_throughput(
                        target, "user1", mailbox, self.cpu_of(target)
                    )
                    runs[target.name].append(result)
                    self.say(f"fetch run {run + 1} {target.name}: {result['MBps']:.0f} MB/s")
            for name, results in runs.items():
                best = max(results, key=lambda r: r["MBps"])
                best = dict(best, median_MBps=sorted(r["MBps"] for r in results)[len(results) // 2])
                self.record("fetch", name, best)
        if "small" in self.only:
            mailbox = "bench-small"
            workloads.prepare_mailbox(direct, "user2", mailbox, 50, 3000)
            samples: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}
            for _ in range(sizes.passes):
                for target in targets:
                    got = workloads.small_commands(
                        target, "user2", mailbox, sizes.small_rounds, sizes.time_limit
                    )
                    for kind, values in got.items():
                        samples[target.name].setdefault(kind, []).extend(values)
            for name, by_kind in samples.items():
                summary = workloads.summarize_latency(by_kind)
                self.record("small", name, summary)
                self.say(f"small {name}: NOOP p50 {summary['noop_p50_ms']:.3f} ms")
        if "logins" in self.only:
            # The proxy with spare upstream connections too: a login then skips the connect.
            login_targets = [*targets, *([self.spares] if self.spares else [])]
            passes: dict[str, list[dict[str, float]]] = {t.name: [] for t in login_targets}
            for _ in range(sizes.passes):
                for target in login_targets:
                    passes[target.name].append(
                        workloads.sequential_logins(
                            target, sizes.logins, sizes.time_limit, self.cpu_of(target)
                        )
                    )
            for name, results in passes.items():
                best = max(results, key=lambda r: r["per_sec"])
                self.record("logins", name, best)
                self.say(f"logins {name}: {best['per_sec']:.0f}/s")
        if "mixed" in self.only:
            mailbox = "bench-mixed"
            for index in range(sizes.mixed_clients):
                workloads.prepare_mailbox(
                    direct, f"user{index + 1}", mailbox, sizes.mixed_messages, 4000
                )
            mixed_targets = [*targets, norules]
            mixed_runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in mixed_targets}
            for run in range(sizes.passes):
                for target in mixed_targets:
                    result = workloads.mixed(
                        target,
                        sizes.mixed_clients,
                        sizes.mixed_ops,
                        mailbox,
                        seed=run + 1,
                        time_limit=sizes.time_limit,
                        cpu=self.cpu_of(target),
                    )
                    mixed_runs[target.name].append(result)
            for name, results in mixed_runs.items():
                best = max(results, key=lambda r: r["ops_per_sec"])
                self.record("mixed", name, best)
                self.say(f"mixed {name}: {best['ops_per_sec']:.0f} ops/s")
            self.rules_cost(mailbox, [mixed_runs[t.name] for t in (targets[-1], norules)], norules)

    def rules_cost(
        self, mailbox: str, earlier: list[list[dict[str, float]]], norules: Target
    ) -> None:
        """More alternating mixed passes of the proxy with and without rules; medians.

        Two configurations of one program differ by less than run-to-run noise, so the
        rule cost is judged on the median of several alternating passes, not one best.
        """
        sizes = self.sizes
        proxy = next(t for t in self.services_targets if t.name == PROXY)
        for run in range(sizes.rules_passes):
            for index, target in enumerate((proxy, norules)):
                earlier[index].append(
                    workloads.mixed(
                        target,
                        sizes.mixed_clients,
                        sizes.mixed_ops,
                        mailbox,
                        seed=100 + run,
                        time_limit=sizes.time_limit,
                    )
                )
        for name, results in zip((PROXY, NO_RULES), earlier, strict=True):
            rates = sorted(r["ops_per_sec"] for r in results)
            self.figures.setdefault("rules", {})[name] = {
                "ops_per_sec_median": rates[len(rates) // 2],
                "passes": len(rates),
            }

    # ------------------------------------------------------------------------ IDLE
    def idle(self, sessions: int) -> None:
        services = self.services
        direct = services.private_dovecot()
        relay = services.py_relay("py-relay-idle", direct.port)
        proxy = services.proxy("proxy-idle", direct.port, max_connections=sessions + 100)
        users = min(50, sessions)

        def deliver() -> None:
            workloads.deliver_to_all(direct, users)

        for name, target in (("direct", direct), ("py-relay", relay), (PROXY, proxy)):
            memory = self._memory_reader(target)
            self.say(f"idle {name}: {sessions} sessions ...")
            result = workloads.idle_sessions(target, sessions, memory, deliver)
            self.record("idle", name, result)
            self.say(
                f"idle {name}: {result['answered']:.0f}/{sessions} answered, "
                f"{result.get('rss_mb_held', float('nan')):.0f} MB RSS held"
            )

    @staticmethod
    def _memory_reader(target: Target) -> Callable[[], dict[str, float]]:
        pid = target.pid
        if pid is None:
            return dict
        if target.name == "direct":  # Dovecot: the whole process group

            def group() -> dict[str, float]:
                rss, pss, count = group_rss_pss_kb(pid)
                return {"rss_kb": rss, "pss_kb": pss, "processes": count}

            return group

        def single() -> dict[str, float]:
            rss, pss = rss_pss_kb(pid)
            return {"rss_kb": rss, "pss_kb": pss}

        return single


def machine_facts() -> dict[str, Any]:
    dovecot = subprocess.run(
        ["/usr/sbin/dovecot", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "dovecot": dovecot,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    idle_sessions = args.idle if args.idle is not None else sizes.idle
    fds = raise_fd_limit(max(65536, 2 * idle_sessions + 2000))
    notes: list[str] = []
    # The proxy holds two sockets per session (client and upstream) plus its listeners.
    fitting = (fds - FD_RESERVE) // 2
    if idle_sessions > fitting:
        notes.append(
            f"IDLE sessions capped at {fitting} (asked {idle_sessions}): the open-files limit "
            f"is {fds} and cannot be raised here; the proxy needs 2 per session"
        )
        idle_sessions = fitting
    started = time.monotonic()
    with (
        run_directory(args.keep) as run_dir,
        Services(
            run_dir,
            shared_dir=None if args.no_shared else args.shared,
            log=sys.stderr,
            proxy_source=args.proxy_src.resolve(),
        ) as services,
    ):
        services.notes.extend(notes)
        services.say(f"run directory {run_dir}; open files limit {fds}")
        services.say(f"proxy from {args.proxy_src} ({source_version(args.proxy_src)})")
        runner = Runner(services, sizes, args.only)
        main_work = [name for name in args.only if name != "idle"]
        relay_name = "py-relay"
        if main_work:
            if services.shared_dir is not None:
                direct = services.shared_upstream()
                peers = services.shared_peers()
                relay_name = "socat" if any(p.name == "socat" for p in peers) else "py-relay"
            else:
                direct = services.private_dovecot()
                peers = []
                services.notes.append("../shared/bench absent: no peer proxies, private Dovecot")
            py_relay = services.py_relay("py-relay", direct.port)
            trio_relay = services.py_relay(TRIO_RELAY, direct.port, engine="trio")
            proxy = services.proxy(PROXY, direct.port, max_connections=10_000)
            empty_rules = run_dir / "no-rules"
            empty_rules.mkdir()
            norules = services.proxy(
                NO_RULES, direct.port, max_connections=10_000, rules_dir=empty_rules
            )
            targets = [direct, *peers, py_relay, trio_relay, proxy]
            runner.services_targets = targets
            if "logins" in args.only:
                runner.spares = services.proxy(
                    SPARES, direct.port, max_connections=10_000, spare_connections=SPARE_COUNT
                )
            runner.main_workloads(direct, targets, norules)
        if "idle" in args.only:
            runner.idle(idle_sessions)
        results: dict[str, Any] = {
            "sizes": asdict(sizes) | {"idle": idle_sessions},
            "machine": machine_facts(),
            "targets": runner.order,
            "relay": relay_name,
            "figures": runner.figures,
            "notes": services.notes,
            "proxy_source": f"{args.proxy_src} ({source_version(args.proxy_src)})",
            "seconds": round(time.monotonic() - started, 1),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(full_report(results))
    print(f"\n(total {results['seconds']} s; sizes {results['sizes']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
