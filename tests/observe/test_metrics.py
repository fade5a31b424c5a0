"""The metrics observer, fed synthetic events; and the deploy files built on its names.

How this works: each test builds a `Metrics` (its own registry) with a hand-driven clock,
feeds it the events a connection and its session would report, and reads the values back
with `registry.get_sample_value`. Events of two connections are told apart by the
`current_connection` context variable, as the server sets it per connection task; the
tests set it with `contextvars.Context.run`. The deploy tests parse the alert rules, the
PrometheusRule and the Grafana dashboard and check every metric they mention against the
registry; `promtool` checks the exposition and the rule file (skipped only when promtool
is missing outside CI).
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from imap_proxy import __version__
from imap_proxy.net.connection import ConnectionClosed, ConnectionOpened, ConnectionStats
from imap_proxy.net.sockio import BusyPoll
from imap_proxy.net.upstream import UpstreamUnavailable
from imap_proxy.observe.metrics import (
    MAX_IN_FLIGHT_PER_CONNECTION,
    MAX_LABEL_VALUES,
    Metrics,
    command_label,
    confidence_bucket,
    current_connection,
    fan_out,
)
from imap_proxy.session import events as ev
from imap_proxy.wire.errors import Side

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "imap-proxy.json"
METRIC_NAME = re.compile(r"\bimap_proxy_[a-z0-9_]+")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    return Metrics(clock=clock)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def in_connection(connection_id: str, action: Callable[[], None]) -> None:
    """Run `action` as the server runs a connection's tasks: under its context variable."""

    def run() -> None:
        current_connection.set(connection_id)
        action()

    contextvars.copy_context().run(run)


def opened(connection_id: str, listener: str = "imap") -> ConnectionOpened:
    return ConnectionOpened(connection_id, listener, "127.0.0.1", 40000)


def closed(
    connection_id: str, listener: str = "imap", *, from_client: int = 0, from_upstream: int = 0
) -> ConnectionClosed:
    stats = ConnectionStats(bytes_from_client=from_client, bytes_from_upstream=from_upstream)
    return ConnectionClosed(connection_id, listener, "client-closed", "none", 1.0, stats)


def feed(metrics: Metrics, connection_id: str, *events: Any) -> None:
    def observe_all() -> None:
        for event in events:
            metrics.observe(event)

    in_connection(connection_id, observe_all)


# --- labels -------------------------------------------------------------------------


def test_command_names_map_onto_a_fixed_set() -> None:
    assert command_label("FETCH") == "FETCH"
    assert command_label("uid  fetch") == "UID FETCH"
    assert command_label("UID MOVE") == "UID MOVE"
    assert command_label("XAPPLEPUSHSERVICE") == "OTHER"
    assert command_label("UID LOGIN") == "OTHER"
    assert command_label("a" * 500) == "OTHER"


def test_confidence_buckets() -> None:
    assert [confidence_bucket(c) for c in (None, 0.0, 0.3, 0.5, 0.79, 0.8, 1.0)] == [
        "none",
        "none",
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]


# --- one connection -----------------------------------------------------------------


def test_a_session_moves_connection_command_byte_and_session_counters(
    metrics: Metrics, clock: FakeClock
) -> None:
    feed(metrics, "c1", opened("c1"), ev.UpstreamReady(("IMAP4rev1",)))
    assert value(metrics, "imap_proxy_connections_accepted_total", listener="imap", tls="none") == 1
    assert value(metrics, "imap_proxy_connections_active", listener="imap") == 1

    feed(metrics, "c1", ev.CommandStarted("a1", "LOGIN"))
    clock.now += 0.25
    feed(metrics, "c1", ev.CommandCompleted("a1", "LOGIN", "OK"))
    feed(metrics, "c1", ev.CommandStarted("a2", "UID FETCH"))
    clock.now += 2.0
    feed(metrics, "c1", ev.CommandCompleted("a2", "UID FETCH", "NO"))
    feed(metrics, "c1", closed("c1", from_client=120, from_upstream=4000))

    commands = "imap_proxy_commands_total"
    assert value(metrics, commands, command="LOGIN", outcome="OK", client_family="unknown") == 1
    assert value(metrics, commands, command="UID FETCH", outcome="NO", client_family="unknown") == 1
    duration = "imap_proxy_command_duration_seconds"
    assert value(metrics, duration + "_sum", command="LOGIN") == pytest.approx(0.25)
    assert value(metrics, duration + "_sum", command="UID FETCH") == pytest.approx(2.0)
    assert value(metrics, duration + "_bucket", command="UID FETCH", le="1.0") == 0
    assert value(metrics, duration + "_bucket", command="UID FETCH", le="2.5") == 1
    assert value(metrics, "imap_proxy_connections_active", listener="imap") == 0
    assert value(metrics, "imap_proxy_bytes_total", direction="client_to_upstream") == 120
    assert value(metrics, "imap_proxy_bytes_total", direction="upstream_to_client") == 4000
    assert (
        value(metrics, "imap_proxy_sessions_total", client_family="unknown", confidence="none") == 1
    )


def test_implicit_tls_listener_is_labelled(metrics: Metrics) -> None:
    feed(metrics, "t1", opened("t1", "imaps"))
    assert (
        value(metrics, "imap_proxy_connections_accepted_total", listener="imaps", tls="implicit")
        == 1
    )


def test_a_connection_that_never_reached_the_upstream_is_no_session(metrics: Metrics) -> None:
    feed(metrics, "c1", opened("c1"), closed("c1"))
    assert (
        value(metrics, "imap_proxy_sessions_total", client_family="unknown", confidence="none") == 0
    )
    assert value(metrics, "imap_proxy_connections_accepted_total", listener="imap", tls="none") == 1


def test_unknown_verbs_are_counted_as_other(metrics: Metrics) -> None:
    feed(metrics, "c1", opened("c1"), ev.CommandStarted("x", "XSECRETMAILBOXNAME"))
    feed(metrics, "c1", ev.CommandCompleted("x", "XSECRETMAILBOXNAME", "BAD"))
    assert (
        value(
            metrics,
            "imap_proxy_commands_total",
            command="OTHER",
            outcome="BAD",
            client_family="unknown",
        )
        == 1
    )
    assert "XSECRETMAILBOXNAME" not in metrics.exposition().decode()


def test_commands_in_flight_at_close_are_aborted_and_forgotten(
    metrics: Metrics, clock: FakeClock
) -> None:
    feed(metrics, "c1", opened("c1"), ev.CommandStarted("i1", "IDLE"), closed("c1"))
    assert (
        value(
            metrics,
            "imap_proxy_commands_total",
            command="IDLE",
            outcome="ABORTED",
            client_family="unknown",
        )
        == 1
    )
    # The start time went with the connection: a late completion under that id times nothing.
    clock.now += 5
    feed(metrics, "c1", ev.CommandCompleted("i1", "IDLE", "OK"))
    assert value(metrics, "imap_proxy_command_duration_seconds_count", command="IDLE") == 0


def test_in_flight_tags_per_connection_are_bounded(metrics: Metrics, clock: FakeClock) -> None:
    started = [ev.CommandStarted(f"t{n}", "NOOP") for n in range(MAX_IN_FLIGHT_PER_CONNECTION + 50)]
    feed(metrics, "c1", opened("c1"), *started)
    clock.now += 1
    # The oldest were dropped: completing them times nothing; the newest are still timed.
    feed(metrics, "c1", ev.CommandCompleted("t0", "NOOP", "OK"))
    assert value(metrics, "imap_proxy_command_duration_seconds_count", command="NOOP") == 0
    last = f"t{MAX_IN_FLIGHT_PER_CONNECTION + 49}"
    feed(metrics, "c1", ev.CommandCompleted(last, "NOOP", "OK"))
    assert value(metrics, "imap_proxy_command_duration_seconds_count", command="NOOP") == 1
    feed(metrics, "c1", closed("c1"))
    aborted = value(
        metrics,
        "imap_proxy_commands_total",
        command="NOOP",
        outcome="ABORTED",
        client_family="unknown",
    )
    assert aborted == MAX_IN_FLIGHT_PER_CONNECTION - 1


def test_two_connections_with_the_same_tags_are_timed_apart(
    metrics: Metrics, clock: FakeClock
) -> None:
    feed(metrics, "c1", opened("c1"), ev.CommandStarted("A1", "SELECT"))
    clock.now += 10
    feed(metrics, "c2", opened("c2"), ev.CommandStarted("A1", "SELECT"))
    clock.now += 1
    feed(metrics, "c2", ev.CommandCompleted("A1", "SELECT", "OK"))
    feed(metrics, "c1", ev.CommandCompleted("A1", "SELECT", "OK"))
    # c2 took 1 s, c1 took 11 s; keyed by tag alone both would have been ~1 s.
    assert value(
        metrics, "imap_proxy_command_duration_seconds_sum", command="SELECT"
    ) == pytest.approx(12.0)
    assert value(metrics, "imap_proxy_connections_active", listener="imap") == 2


# --- fingerprint, rules, emulations, violations ---------------------------------------


def test_client_family_labels_commands_and_sessions(metrics: Metrics) -> None:
    feed(metrics, "c1", opened("c1"), ev.UpstreamReady(()))
    feed(metrics, "c1", ev.ClientIdentified("Thunderbird", "115.0", 0.9))
    feed(metrics, "c1", ev.CommandStarted("1", "NOOP"), ev.CommandCompleted("1", "NOOP", "OK"))
    feed(metrics, "c1", closed("c1"))
    assert (
        value(
            metrics,
            "imap_proxy_commands_total",
            command="NOOP",
            outcome="OK",
            client_family="thunderbird",
        )
        == 1
    )
    assert (
        value(metrics, "imap_proxy_sessions_total", client_family="thunderbird", confidence="high")
        == 1
    )


def test_client_family_label_values_are_capped(metrics: Metrics) -> None:
    for number in range(MAX_LABEL_VALUES + 10):
        connection = f"c{number}"
        feed(metrics, connection, opened(connection), ev.UpstreamReady(()))
        feed(metrics, connection, ev.ClientIdentified(f"family-{number}", None, 0.6))
        feed(metrics, connection, closed(connection))
    families = {
        sample.labels["client_family"]
        for family in metrics.registry.collect()
        if family.name == "imap_proxy_sessions"
        for sample in family.samples
        if sample.name == "imap_proxy_sessions_total"
    }
    assert len(families) == MAX_LABEL_VALUES + 1
    assert "other" in families
    assert (
        value(metrics, "imap_proxy_sessions_total", client_family="other", confidence="medium")
        == 10
    )


def test_rules_applied_are_counted_by_rule_and_action(metrics: Metrics) -> None:
    feed(metrics, "c1", opened("c1"), ev.RuleApplied("outlook-trash", "rename_mailbox"))
    feed(metrics, "c1", ev.RuleApplied("outlook-trash", "rename_mailbox"))
    assert (
        value(
            metrics, "imap_proxy_rules_applied_total", rule="outlook-trash", action="rename_mailbox"
        )
        == 2
    )


@dataclass(frozen=True)
class EmulationFinished:
    """A stand-in for the emulation observation the rule engine will add."""

    kind: str
    outcome: str


def test_emulation_outcomes_by_class_name(metrics: Metrics) -> None:
    # The rollback series exists at 0 before anything happens (alerts use increase()).
    assert (
        metrics.registry.get_sample_value(
            "imap_proxy_emulations_total", {"kind": "move", "outcome": "rolled_back"}
        )
        == 0
    )
    metrics.observe(EmulationFinished("move", "rolled_back"))  # type: ignore[arg-type]
    metrics.observe(EmulationFinished("stub_fetch", "served"))  # type: ignore[arg-type]
    assert value(metrics, "imap_proxy_emulations_total", kind="move", outcome="rolled_back") == 1
    assert value(metrics, "imap_proxy_emulations_total", kind="stub_fetch", outcome="served") == 1


def test_protocol_violations_and_limits(metrics: Metrics) -> None:
    feed(metrics, "c1", opened("c1"))
    feed(metrics, "c1", ev.ProtocolViolation(Side.CLIENT, "line too long", "line_length"))
    feed(metrics, "c1", ev.ProtocolViolation(Side.UPSTREAM, "unexpected response"))
    assert value(metrics, "imap_proxy_protocol_violations_total", side="client") == 1
    assert value(metrics, "imap_proxy_protocol_violations_total", side="upstream") == 1
    assert value(metrics, "imap_proxy_limits_hit_total", limit="line_length", side="client") == 1
    metrics.connection_rejected("imap", "max_connections", limit="max_connections")
    assert (
        value(
            metrics,
            "imap_proxy_connections_rejected_total",
            listener="imap",
            reason="max_connections",
        )
        == 1
    )
    assert (
        value(metrics, "imap_proxy_limits_hit_total", limit="max_connections", side="client") == 1
    )


def test_rule_reloads_and_build_info(metrics: Metrics) -> None:
    metrics.record_rule_reload(True)
    metrics.record_rule_reload(False)
    metrics.record_rule_reload(False)
    assert value(metrics, "imap_proxy_rule_reloads_total", outcome="ok") == 1
    assert value(metrics, "imap_proxy_rule_reloads_total", outcome="failed") == 2
    assert value(metrics, "imap_proxy_build_info", version=__version__) == 1


def test_two_metrics_objects_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.record_rule_reload(True)
    assert value(first, "imap_proxy_rule_reloads_total", outcome="ok") == 1
    assert value(second, "imap_proxy_rule_reloads_total", outcome="ok") == 0


def test_fan_out_calls_every_observer() -> None:
    seen: list[object] = []
    metrics = Metrics()
    observer = fan_out(seen.append, None, metrics.observe)
    observer(opened("c1"))
    assert seen == [opened("c1")]
    assert value(metrics, "imap_proxy_connections_active", listener="imap") == 1


# --- live bytes ----------------------------------------------------------------------


@dataclass
class LiveConnection:
    connection_id: str
    stats: ConnectionStats


def test_open_connections_bytes_are_read_at_scrape_time(metrics: Metrics) -> None:
    live = LiveConnection("c1", ConnectionStats(bytes_from_client=10, bytes_from_upstream=20))
    connections = [live]
    metrics.track_live_connections(lambda: connections)
    feed(metrics, "c1", opened("c1"))
    assert value(metrics, "imap_proxy_bytes_total", direction="upstream_to_client") == 20
    live.stats.bytes_from_upstream = 500
    assert value(metrics, "imap_proxy_bytes_total", direction="upstream_to_client") == 500
    # Closing moves the final figures to the closed total; still listed, not counted twice.
    feed(metrics, "c1", closed("c1", from_client=10, from_upstream=500))
    assert value(metrics, "imap_proxy_bytes_total", direction="upstream_to_client") == 500
    connections.clear()
    assert value(metrics, "imap_proxy_bytes_total", direction="upstream_to_client") == 500
    assert value(metrics, "imap_proxy_bytes_total", direction="client_to_upstream") == 10


def test_busy_polls_are_read_at_scrape_time(metrics: Metrics) -> None:
    assert metrics.registry.get_sample_value("imap_proxy_busy_poll_seconds_total") is None
    poll = BusyPoll(window=0.0005, max_pollers=2)
    metrics.track_busy_poll(poll)
    assert value(metrics, "imap_proxy_busy_polls_total", outcome="data") == 0
    poll.found, poll.timed_out, poll.seconds = 7, 2, 0.25
    assert value(metrics, "imap_proxy_busy_polls_total", outcome="data") == 7
    assert value(metrics, "imap_proxy_busy_polls_total", outcome="timeout") == 2
    assert value(metrics, "imap_proxy_busy_poll_seconds_total") == 0.25
    # A second server on the same Metrics replaces the source: one series, not two.
    metrics.track_busy_poll(BusyPoll(window=0.0005, max_pollers=2))
    assert value(metrics, "imap_proxy_busy_polls_total", outcome="data") == 0
    exposition = metrics.exposition().decode()
    assert exposition.count('imap_proxy_busy_polls_total{outcome="data"}') == 1


# --- upstream connects ---------------------------------------------------------------


class ScriptedDialer:
    def __init__(self, failure: str | None) -> None:
        self.failure = failure

    async def connect(self) -> trio.abc.Stream:
        if self.failure is not None:
            raise UpstreamUnavailable(self.failure)
        left, _right = trio.testing.memory_stream_pair()
        return left

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        return stream


async def test_instrumented_dialer_counts_outcomes_and_times_successes(metrics: Metrics) -> None:
    await metrics.instrument(ScriptedDialer(None)).connect()
    for reason in ("connection refused", "timed out", "certificate verify failed", "odd"):
        with pytest.raises(UpstreamUnavailable):
            await metrics.instrument(ScriptedDialer(reason)).connect()
    assert value(metrics, "imap_proxy_upstream_connects_total", outcome="ok") == 1
    assert value(metrics, "imap_proxy_upstream_connects_total", outcome="refused") == 1
    assert value(metrics, "imap_proxy_upstream_connects_total", outcome="timeout") == 1
    assert value(metrics, "imap_proxy_upstream_connects_total", outcome="certificate") == 1
    assert value(metrics, "imap_proxy_upstream_connects_total", outcome="failed") == 1
    assert value(metrics, "imap_proxy_upstream_connect_duration_seconds_count") == 1


# --- exposition and deploy files -----------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def populated_metrics() -> Metrics:
    metrics = Metrics()
    feed(metrics, "c1", opened("c1"), ev.UpstreamReady(()), ev.ClientIdentified("k9", "6", 0.7))
    feed(metrics, "c1", ev.CommandStarted("a", "FETCH"), ev.CommandCompleted("a", "FETCH", "OK"))
    feed(
        metrics,
        "c1",
        ev.RuleApplied("r1", "map_mailbox"),
        ev.ProtocolViolation(Side.CLIENT, "x", "nesting"),
    )
    feed(metrics, "c1", closed("c1", from_client=5, from_upstream=7))
    metrics.connection_rejected("imap", "max_connections", limit="max_connections")
    metrics.set_upstream_up(True)
    metrics.upstream_connect("ok", 0.01)
    metrics.track_busy_poll(BusyPoll(window=0.0005, max_pollers=2))
    return metrics


def test_promtool_accepts_the_exposition() -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=populated_metrics().exposition(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exposed_names(metrics: Metrics) -> set[str]:
    """Every series name the registry can produce (histogram parts and _total included)."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def test_alert_rules_equal_the_prometheusrule_and_name_real_metrics() -> None:
    alerts = yaml.safe_load(ALERTS.read_text())
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == alerts["groups"]
    names = exposed_names(Metrics())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    used = {name for rule in rules for name in METRIC_NAME.findall(rule["expr"])}
    assert used and used <= names, used - names
    alert_names = {rule["alert"] for rule in rules}
    assert {"ImapProxyUpstreamDown", "ImapProxyMoveRolledBack"} <= alert_names
    exprs = " ".join(rule["expr"] for rule in rules)
    for needed in (
        "imap_proxy_upstream_up",
        'outcome="rolled_back"',
        "NO|BAD|BYE",
        "imap_proxy_connections_rejected_total",
        "imap_proxy_protocol_violations_total",
    ):
        assert needed in exprs


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs.extend(target["expr"] for target in inner.get("targets", []))
    return exprs


def test_dashboard_is_json_and_every_expr_names_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 10
    names = exposed_names(Metrics())
    for expr in exprs:
        used = set(METRIC_NAME.findall(expr))
        assert used, expr
        assert used <= names, (expr, used - names)
    everything = " ".join(exprs)
    for topic in (
        "imap_proxy_sessions_total",
        "imap_proxy_rules_applied_total",
        "imap_proxy_emulations_total",
        "imap_proxy_upstream_up",
        "imap_proxy_bytes_total",
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ):
        assert topic in everything
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
