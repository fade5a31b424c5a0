"""Profile the proxy process under one workload with py-spy: `python -m bench.profile`.

How this works: it starts one proxy process (bench.services) in front of the shared
Dovecot on 14143 (or a private one), attaches `py-spy record` to that pid, runs a workload
against the proxy from this process (`small`: NOOP/SELECT/FETCH FLAGS round trips;
`logins`: sequential logins; `fetch`: large-body FETCH; `mixed`: the mixed workload's
8 concurrent clients), stops py-spy, and prints the hottest functions by own time and by
total time from py-spy's raw (collapsed) output.
The raw file is kept for a closer look (e.g. flamegraph.pl or speedscope).
py-spy is not a project dependency: `pip install py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads
from bench.services import DEFAULT_SHARED, REPO_ROOT, Services, run_directory


def hot_spots(collapsed: Path, top: int) -> str:
    """Own-time and total-time tables from py-spy's collapsed stacks ("a;b;c N")."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    # A frame's name can hold a line break (code that attrs generates names its source
    # line), which splits its stack over two lines: the part without a count is dropped.
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [frame.strip() for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples"]
    for title, counter in (("own time", own), ("total time (inclusive)", total)):
        lines.append(f"\n-- {title}")
        for frame, count in counter.most_common(top):
            lines.append(f"{100 * count / max(1, samples):5.1f}%  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument(
        "--workload", choices=("small", "logins", "fetch", "mixed"), default="small"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="workload time limit")
    parser.add_argument("--proxy-src", type=Path, default=REPO_ROOT)
    parser.add_argument("--out", type=Path, default=Path("/tmp/imap-proxy-profile"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-shared", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        parser.error("py-spy not found: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        run_directory(False) as run_dir,
        Services(
            run_dir,
            shared_dir=None if args.no_shared else DEFAULT_SHARED,
            log=sys.stderr,
            proxy_source=args.proxy_src.resolve(),
        ) as services,
    ):
        direct = (
            services.shared_upstream()
            if services.shared_dir is not None
            else services.private_dovecot()
        )
        proxy = services.proxy("proxy", direct.port, max_connections=10_000)
        assert proxy.pid is not None
        workloads.prepare_mailbox(direct, "user2", "bench-small", 50, 3000)
        fetch_box = "bench-fetch-20x10000000"
        if args.workload == "mixed":
            for index in range(8):
                workloads.prepare_mailbox(direct, f"user{index + 1}", "bench-mixed", 100, 4000)
        if args.workload == "fetch":
            workloads.prepare_mailbox(direct, "user1", fetch_box, 20, 10_000_000)
        raw = args.out / f"{args.workload}.txt"
        spy = subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(proxy.pid), "--rate", "250"),
                *("--format", "raw", "--output", str(raw), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        deadline = time.monotonic() + args.seconds
        if args.workload == "small":
            workloads.small_commands(proxy, "user2", "bench-small", 1_000_000, args.seconds)
        elif args.workload == "logins":
            workloads.sequential_logins(proxy, 1_000_000, args.seconds)
        elif args.workload == "mixed":
            while time.monotonic() < deadline:
                workloads.mixed(proxy, 8, 300, "bench-mixed", seed=1, time_limit=args.seconds)
        else:
            while time.monotonic() < deadline:
                workloads.fetch_throughput(proxy, "user1", fetch_box)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        print(hot_spots(raw, args.top))
        print(f"\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
