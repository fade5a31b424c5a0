"""The benchmark runner's code imports, and its tables and target verdicts are right.

Synthetic figures only: nothing here starts a server or runs a workload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import run as bench_run
from bench.report import check_targets, figures_table, format_number, full_report, ratio_table
from bench.workloads import percentile, summarize_latency


def synthetic_results(
    *, idle_sessions: int = 10_000, proxy_rss_mb: float = 300.0
) -> dict[str, Any]:
    def per_target(values: dict[str, float], metric: str) -> dict[str, dict[str, float]]:
        return {target: {metric: value} for target, value in values.items()}

    small = {
        target: {"noop_p50_ms": p50, "select_p50_ms": p50, "fetch_flags_p50_ms": p50}
        for target, p50 in {"direct": 0.10, "socat": 0.11, "nginx": 0.20, "proxy": 0.30}.items()
    }
    idle = {
        "sessions": idle_sessions,
        "answered": idle_sessions,
        "done_ok": idle_sessions,
        "rss_mb_held": proxy_rss_mb,
        "kb_per_session": proxy_rss_mb * 1024 / idle_sessions,
    }
    return {
        "targets": ["direct", "socat", "nginx", "proxy", "proxy-norules"],
        "relay": "socat",
        "figures": {
            "fetch": per_target(
                {"direct": 1000.0, "socat": 500.0, "nginx": 800.0, "proxy": 900.0}, "MBps"
            ),
            "small": small,
            "logins": per_target(
                {"direct": 200.0, "socat": 190.0, "nginx": 150.0, "proxy": 170.0}, "per_sec"
            ),
            "mixed": per_target(
                {"direct": 1000.0, "proxy": 880.0, "proxy-norules": 1000.0}, "ops_per_sec"
            ),
            "idle": {"proxy": idle},
            "rules": {
                "proxy": {"ops_per_sec_median": 880.0},
                "proxy-norules": {"ops_per_sec_median": 1000.0},
            },
        },
        "notes": ["synthetic"],
    }


def test_figures_table_shows_values_and_the_proxy_ratios() -> None:
    table = figures_table(synthetic_results())
    fetch_row = next(line for line in table.splitlines() if line.startswith("| large FETCH "))
    cells = [cell.strip() for cell in fetch_row.strip("|").split("|")]
    # figure, unit, direct, socat, nginx, proxy, proxy-norules, ÷direct, ÷relay,
    # ÷trio-relay (not measured here), ÷nginx
    assert cells == [
        "large FETCH",
        "MB/s",
        "1,000",
        "500",
        "800",
        "900",
        "-",
        "0.90x",
        "1.80x",
        "-",
        "1.12x",
    ]
    assert "| NOOP p50" in table
    assert "IDLE memory per session" in table
    assert "NOOP p99" not in table  # rows without any figure are left out


def test_ratio_table_relates_every_target_to_direct() -> None:
    table = ratio_table(synthetic_results())
    logins = next(line for line in table.splitlines() if "sequential logins" in line)
    assert [cell.strip() for cell in logins.strip("|").split("|")][1:] == [
        "0.95x",
        "0.75x",
        "0.85x",
        "-",
    ]


def test_target_verdicts() -> None:
    verdicts = {
        check.target: check.status
        for check in check_targets(synthetic_results())
        if not check.target.startswith("  for scale")
    }
    assert verdicts == {
        "large FETCH >= 0.85 x direct": "met",
        "large FETCH >= nginx": "met",
        "small-command p50 <= 1.25 x nginx": "NOT MET",  # 0.30 vs 0.20 ms
        "sequential logins/s >= 0.9 x direct": "NOT MET",  # 170 vs 200
        "10,000 IDLE: all answered, RSS <= 400 MB (<= 40 KB/session)": "met",
        "default rules cost <= 10% (mixed ops/s, median)": "NOT MET",  # 12% slower
    }


def test_a_bare_trio_relay_is_shown_for_scale_and_never_judged() -> None:
    results = synthetic_results()
    results["targets"].insert(3, "trio-relay")
    results["figures"]["small"]["trio-relay"] = dict.fromkeys(
        ("noop_p50_ms", "select_p50_ms", "fetch_flags_p50_ms"), 0.26
    )
    results["figures"]["logins"]["trio-relay"] = {"per_sec": 160.0}
    checks = {check.target: check for check in check_targets(results)}
    small = checks["  for scale: a bare trio relay ÷ nginx"]
    assert small.measured == "NOOP 1.30x, SELECT 1.30x, FETCH FLAGS 1.30x"
    assert small.status.startswith("n/a:")
    assert checks["  for scale: a bare trio relay ÷ direct"].measured == "0.80x"
    noop = next(line for line in figures_table(results).splitlines() if "NOOP p50" in line)
    cells = [cell.strip() for cell in noop.strip("|").split("|")]
    assert cells[-2:] == ["1.15x", "1.50x"]  # proxy ÷ trio-relay, proxy ÷ nginx


def test_the_c_relays_login_ratio_is_shown_for_scale_and_never_judged() -> None:
    checks = {check.target: check for check in check_targets(synthetic_results())}
    peers = checks["  for scale: the relays in C ÷ direct"]
    assert peers.measured == "socat 0.95x, nginx 0.75x"  # 190 and 150 vs 200 logins/s
    assert peers.status.startswith("n/a:")
    results = synthetic_results()
    for name in ("socat", "nginx"):
        del results["figures"]["logins"][name]
    assert all(not c.target.startswith("  for scale") for c in check_targets(results))


def test_idle_verdict_below_ten_thousand_sessions_is_not_a_pass() -> None:
    def idle_check(results: dict[str, Any]) -> Any:
        return next(c for c in check_targets(results) if c.target.startswith("10,000 IDLE"))

    small_run = idle_check(synthetic_results(idle_sessions=2000, proxy_rss_mb=60.0))
    assert small_run.status.startswith("n/a: run with --idle 10000")
    assert "projected" in small_run.measured
    too_big = idle_check(synthetic_results(proxy_rss_mb=450.0))
    assert too_big.status == "NOT MET"


def test_missing_peers_are_not_applicable_rather_than_failed() -> None:
    results = synthetic_results()
    for workload in ("fetch", "small", "logins"):
        del results["figures"][workload]["nginx"]
    statuses = [check.status for check in check_targets(results)]
    assert statuses[1] == "n/a: nginx not measured"
    assert statuses[2] == "n/a: nginx not measured"
    report = full_report(results)
    assert "Targets" in report and "- synthetic" in report


def test_latency_summary_and_percentiles() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    summary = summarize_latency({"noop": [1.0, 2.0, 3.0], "select": [10.0]})
    assert summary["noop_p50_ms"] == 2.0
    assert summary["all_p99_ms"] == 10.0
    assert summary["samples"] == 4
    assert format_number(1234.5) == "1,234" and format_number(0.1234) == "0.123"


def test_runner_options(tmp_path: Path) -> None:
    args = bench_run.parse_args(
        ["--quick", "--json", str(tmp_path / "out.json"), "--only", "fetch,idle"]
    )
    assert args.quick and args.only == ["fetch", "idle"]
    assert args.json == tmp_path / "out.json"
    assert bench_run.QUICK.fetch_count * bench_run.QUICK.fetch_size < 50_000_000
