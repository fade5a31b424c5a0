"""The imap-proxy benchmark runner (`python -m bench.run`) and codec micro-benchmarks.

How this works: `bench.run` brings up an upstream Dovecot, a plain relay, the peer proxies
of ../shared/bench when present, and the proxy as its own process; `bench.workloads`
drives each of them with the same load from this process; `bench.report` prints the
figures, the ratios and the targets of issue 8. `bench/test_codec.py` holds the
pytest-benchmark micro-benchmarks (`python -m pytest bench --benchmark-only`).
Nothing here is a test of timing: benchmarks print, they never fail a test run.
"""
