"""Turning the runner's figures into the printed tables and the issue's targets.

How this works: results are plain data, `{"figures": {workload: {target: {metric: n}}},
"targets": [names in column order], "relay": name of the plain relay, ...}`, the same
dict the runner writes with --json. `ROWS` says which metric of which workload makes a
row of the main table; `figures_table()` prints every target's value and the proxy's
ratios to direct Dovecot, to the plain relay and to nginx; `ratio_table()` prints every
target's ratio to direct; `check_targets()` evaluates the targets of issue 8 into
`TargetCheck`s (met / NOT MET / n/a with the reason), which `targets_table()` prints.
A ratio is always (target's figure) ÷ (reference's figure): for MB/s, logins/s and ops/s
higher is better, for milliseconds and memory lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

PROXY: Final = "proxy"
DIRECT: Final = "direct"
NGINX: Final = "nginx"
SOCAT: Final = "socat"
C_RELAYS: Final = (SOCAT, NGINX)  # the peers that only relay a login, written in C
TRIO_RELAY: Final = "trio-relay"  # bench.relay --engine trio: the proxy's I/O, nothing else
NO_RULES: Final = "proxy-norules"
SPARES: Final = "proxy-spares"  # upstream.spare_connections on (logins only)
SPARE_COUNT: Final = 4
IDLE_TARGET_SESSIONS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    workload: str
    metric: str
    unit: str
    higher_is_better: bool


ROWS: Final = (
    Row("large FETCH", "fetch", "MBps", "MB/s", True),
    Row("large FETCH CPU", "fetch", "cpu_s_per_GB", "cpu s/GB", False),
    Row("NOOP p50", "small", "noop_p50_ms", "ms", False),
    Row("NOOP p99", "small", "noop_p99_ms", "ms", False),
    Row("SELECT p50", "small", "select_p50_ms", "ms", False),
    Row("SELECT p99", "small", "select_p99_ms", "ms", False),
    Row("FETCH FLAGS p50", "small", "fetch_flags_p50_ms", "ms", False),
    Row("FETCH FLAGS p99", "small", "fetch_flags_p99_ms", "ms", False),
    Row("sequential logins", "logins", "per_sec", "/s", True),
    Row("login p50", "logins", "p50_ms", "ms", False),
    Row("login CPU", "logins", "cpu_ms_per_login", "cpu ms", False),
    Row("mixed workload", "mixed", "ops_per_sec", "ops/s", True),
    Row("mixed p50", "mixed", "p50_ms", "ms", False),
    Row("mixed p99", "mixed", "p99_ms", "ms", False),
    Row("mixed CPU", "mixed", "cpu_ms_per_op", "cpu ms/op", False),
    Row("mixed, median of passes", "rules", "ops_per_sec_median", "ops/s", True),
    Row("IDLE sessions answered", "idle", "answered", "sessions", True),
    Row("IDLE memory held", "idle", "rss_mb_held", "MB RSS", False),
    Row("IDLE memory held (PSS)", "idle", "pss_mb_held", "MB PSS", False),
    Row("IDLE memory per session", "idle", "kb_per_session", "KB", False),
)
RATIO_ROWS: Final = ("MBps", "noop_p50_ms", "fetch_flags_p50_ms", "per_sec", "ops_per_sec")

Results = Mapping[str, Any]


def figure(results: Results, workload: str, target: str, metric: str) -> float | None:
    value = results.get("figures", {}).get(workload, {}).get(target, {}).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def ratio(
    results: Results, workload: str, metric: str, target: str, reference: str
) -> float | None:
    value = figure(results, workload, target, metric)
    base = figure(results, workload, reference, metric)
    if value is None or base is None or base == 0:
        return None
    return value / base


def format_number(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, Markdown-compatible (pipes), columns padded to width."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _has_row(results: Results, row: Row, targets: Sequence[str]) -> bool:
    return any(figure(results, row.workload, t, row.metric) is not None for t in targets)


def figures_table(results: Results) -> str:
    targets: list[str] = list(results.get("targets", []))
    relay = results.get("relay")
    references = [
        ("direct", DIRECT),
        ("relay", relay),
        ("trio-relay", TRIO_RELAY),
        ("nginx", NGINX),
    ]
    header = ["figure", "unit", *targets, *(f"proxy÷{label}" for label, _ in references)]
    rows = []
    for row in ROWS:
        if not _has_row(results, row, targets):
            continue
        cells = [row.label, row.unit]
        cells += [format_number(figure(results, row.workload, t, row.metric)) for t in targets]
        cells += [
            format_ratio(ratio(results, row.workload, row.metric, PROXY, ref) if ref else None)
            for _, ref in references
        ]
        rows.append(cells)
    return render(header, rows)


def ratio_table(results: Results) -> str:
    """Every target's main figures as a ratio to direct Dovecot."""
    targets = [t for t in results.get("targets", []) if t != DIRECT]
    header = ["÷ direct", *targets]
    rows = []
    for row in ROWS:
        if row.metric not in RATIO_ROWS or not _has_row(results, row, targets):
            continue
        cells = [f"{row.label} ({row.unit})"]
        cells += [
            format_ratio(ratio(results, row.workload, row.metric, t, DIRECT)) for t in targets
        ]
        rows.append(cells)
    return render(header, rows)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    target: str
    measured: str
    status: str  # "met" | "NOT MET" | "n/a: <why>"


def _verdict(ok: bool | None, missing: str) -> str:
    if ok is None:
        return f"n/a: {missing}"
    return "met" if ok else "NOT MET"


def check_targets(results: Results) -> list[TargetCheck]:
    checks = []
    to_direct = ratio(results, "fetch", "MBps", PROXY, DIRECT)
    checks.append(
        TargetCheck(
            "large FETCH >= 0.85 x direct",
            format_ratio(to_direct),
            _verdict(None if to_direct is None else to_direct >= 0.85, "no fetch figures"),
        )
    )
    to_nginx = ratio(results, "fetch", "MBps", PROXY, NGINX)
    checks.append(
        TargetCheck(
            "large FETCH >= nginx",
            format_ratio(to_nginx),
            _verdict(None if to_nginx is None else to_nginx >= 1.0, "nginx not measured"),
        )
    )
    kinds = (
        ("NOOP", "noop_p50_ms"),
        ("SELECT", "select_p50_ms"),
        ("FETCH FLAGS", "fetch_flags_p50_ms"),
    )
    small = {label: ratio(results, "small", metric, PROXY, NGINX) for label, metric in kinds}
    known = [value for value in small.values() if value is not None]
    checks.append(
        TargetCheck(
            "small-command p50 <= 1.25 x nginx",
            ", ".join(f"{label} {format_ratio(value)}" for label, value in small.items()),
            _verdict(max(known) <= 1.25 if known else None, "nginx not measured"),
        )
    )
    floor = {label: ratio(results, "small", metric, TRIO_RELAY, NGINX) for label, metric in kinds}
    if any(value is not None for value in floor.values()):
        checks.append(
            TargetCheck(
                "  for scale: a bare trio relay ÷ nginx",
                ", ".join(f"{label} {format_ratio(value)}" for label, value in floor.items()),
                "n/a: the floor of the proxy's I/O stack, not a target",
            )
        )
    logins = ratio(results, "logins", "per_sec", PROXY, DIRECT)
    checks.append(
        TargetCheck(
            "sequential logins/s >= 0.9 x direct",
            format_ratio(logins),
            _verdict(None if logins is None else logins >= 0.9, "no login figures"),
        )
    )
    relayed = ratio(results, "logins", "per_sec", TRIO_RELAY, DIRECT)
    if relayed is not None:
        checks.append(
            TargetCheck(
                "  for scale: a bare trio relay ÷ direct",
                format_ratio(relayed),
                "n/a: the floor of the proxy's I/O stack, not a target",
            )
        )
    peers = {name: ratio(results, "logins", "per_sec", name, DIRECT) for name in C_RELAYS}
    measured_peers = {name: value for name, value in peers.items() if value is not None}
    if measured_peers:
        checks.append(
            TargetCheck(
                "  for scale: the relays in C ÷ direct",
                ", ".join(
                    f"{name} {format_ratio(ratio_)}" for name, ratio_ in measured_peers.items()
                ),
                "n/a: what a login costs through any relay on this host, not a target",
            )
        )
    spared = ratio(results, "logins", "per_sec", SPARES, DIRECT)
    if spared is not None:
        checks.append(
            TargetCheck(
                f"  the same with upstream.spare_connections: {SPARE_COUNT}",
                format_ratio(spared),
                _verdict(spared >= 0.9, "no login figures"),
            )
        )
    checks.append(_idle_check(results))
    on = figure(results, "rules", PROXY, "ops_per_sec_median")
    off = figure(results, "rules", NO_RULES, "ops_per_sec_median")
    cost = None if on is None or off is None or off == 0 else 1 - on / off
    checks.append(
        TargetCheck(
            "default rules cost <= 10% (mixed ops/s, median)",
            "-"
            if cost is None
            else f"{cost * 100:+.1f}% ({format_number(on)} vs {format_number(off)} ops/s)",
            _verdict(None if cost is None else cost <= 0.10, "mixed not measured with rules off"),
        )
    )
    return checks


def _idle_check(results: Results) -> TargetCheck:
    sessions = figure(results, "idle", PROXY, "sessions")
    answered = figure(results, "idle", PROXY, "answered")
    done_ok = figure(results, "idle", PROXY, "done_ok")
    rss = figure(results, "idle", PROXY, "rss_mb_held")
    per_session = figure(results, "idle", PROXY, "kb_per_session")
    name = "10,000 IDLE: all answered, RSS <= 400 MB (<= 40 KB/session)"
    if sessions is None or answered is None or rss is None or per_session is None:
        return TargetCheck(name, "-", "n/a: IDLE not measured")
    measured = (
        f"{answered:.0f}/{sessions:.0f} answered, {done_ok or 0:.0f} DONE ok, "
        f"{rss:.0f} MB, {per_session:.1f} KB/session"
    )
    ok = answered == sessions and done_ok == sessions and rss <= 400 and per_session <= 40
    if sessions < IDLE_TARGET_SESSIONS:
        if not ok:
            return TargetCheck(name, measured, "NOT MET")
        projected = rss + per_session * (IDLE_TARGET_SESSIONS - sessions) / 1024
        return TargetCheck(
            name,
            measured + f", ~{projected:.0f} MB projected",
            f"n/a: run with --idle {IDLE_TARGET_SESSIONS} (measured {sessions:.0f})",
        )
    return TargetCheck(name, measured, "met" if ok else "NOT MET")


def targets_table(checks: Sequence[TargetCheck]) -> str:
    return render(
        ["target (issue 8)", "measured", "status"],
        [[check.target, check.measured, check.status] for check in checks],
    )


def full_report(results: Results) -> str:
    parts = [
        "Figures (ratios: figure ÷ reference; MB/s, /s, ops/s: higher is better; "
        "ms, MB, KB: lower is better)",
        figures_table(results),
        "",
        "Every target relative to direct Dovecot",
        ratio_table(results),
        "",
        "Targets",
        targets_table(check_targets(results)),
    ]
    notes = results.get("notes") or []
    if notes:
        parts += ["", "Notes", *(f"- {note}" for note in notes)]
    return "\n".join(parts)
