"""Run one fuzz target under atheris: `python -m fuzz.run TARGET --runs N`.

How this works: the imap_proxy modules are imported under `atheris.instrument_imports()`
(so libFuzzer sees their coverage), then libFuzzer runs the target from fuzz/targets.py
with the given number of runs, a per-input timeout (a hang is a finding) and an RSS
limit. A corpus directory (`--corpus DIR`) is read and grown when given. An input that
makes the target raise is written as `crash-*` in the current directory and the run
exits non-zero; `python -m fuzz.run TARGET crash-FILE` replays it.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("target", choices=["framer", "command", "response", "session"])
    parser.add_argument("inputs", nargs="*", help="crash files to replay")
    parser.add_argument("--runs", type=int, default=10_000, help="inputs to try")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input, octets")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input: a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    parser.add_argument("--corpus", help="corpus directory (read and extended)")
    parser.add_argument("--seed", type=int, default=0, help="0: random")
    args = parser.parse_args(argv)

    import atheris

    with atheris.instrument_imports(include=["imap_proxy", "fuzz"]):
        from fuzz.targets import TARGETS

    target = TARGETS[args.target]
    libfuzzer_args = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-max_len={args.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-seed={args.seed}",
        "-print_final_stats=1",
    ]
    if args.corpus:
        libfuzzer_args.append(args.corpus)
    libfuzzer_args += args.inputs
    atheris.Setup(libfuzzer_args, target)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


if __name__ == "__main__":
    sys.exit(main())
