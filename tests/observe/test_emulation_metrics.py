"""EmulationFinished observations (MOVE emulation) are counted in emulations_total."""

from __future__ import annotations

from imap_proxy.observe.metrics import Metrics
from imap_proxy.session import events as ev


def test_each_move_outcome_is_counted_by_kind_and_outcome() -> None:
    metrics = Metrics()
    metrics.observe(ev.EmulationFinished("move-emulation", "move", "ok"))
    metrics.observe(ev.EmulationFinished("move-emulation", "move", "ok"))
    metrics.observe(ev.EmulationFinished("move-emulation", "move", "rolled_back"))
    text = metrics.exposition().decode()
    assert 'imap_proxy_emulations_total{kind="move",outcome="ok"} 2.0' in text
    assert 'imap_proxy_emulations_total{kind="move",outcome="rolled_back"} 1.0' in text
    assert 'imap_proxy_emulations_total{kind="move",outcome="failed"} 0.0' in text


def test_list_status_emulations_are_counted_from_zero() -> None:
    metrics = Metrics()
    text = metrics.exposition().decode()
    for outcome in ("ok", "failed", "limited"):
        assert f'imap_proxy_emulations_total{{kind="list_status",outcome="{outcome}"}} 0.0' in text
    metrics.observe(ev.EmulationFinished("list-status-emulation", "list_status", "limited"))
    text = metrics.exposition().decode()
    assert 'imap_proxy_emulations_total{kind="list_status",outcome="limited"} 1.0' in text
