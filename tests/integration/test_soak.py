"""A short soak in the normal suite (the long one is `python -m bench.soak`, see
docs/reliability.md): eight imaplib clients doing random APPEND/FETCH/STORE/COPY/
EXPUNGE/SELECT through the proxy process for about ten seconds, in two rounds.

Every mailbox read directly on Dovecot must equal what the clients did; the proxy's open
file descriptors must be back at the baseline after each round, once every session has
closed, and its RSS must not grow from one round to the next by more than a few MiB.
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import proxy_process, soak
from tests.integration.test_proxy_dovecot import NewUser
from tests.support.dovecot import DovecotInstance

RSS_GROWTH_ALLOWED_KB = 16 * 1024


def test_short_soak_keeps_every_mailbox_and_returns_every_fd(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser, tmp_path: Path
) -> None:
    users = [fresh_mail_user(dovecot_modern) for _ in range(8)]
    upstream = f"{dovecot_modern.host}:{dovecot_modern.port}"
    with proxy_process(upstream, tmp_path / "proxy.log") as (pid, port):
        result = soak(
            port,
            pid,
            [(user.name, user.password) for user in users],
            seconds=10,
            upstream=(dovecot_modern.host, dovecot_modern.port),
        )
    assert result.errors == []
    assert result.mismatches == []
    assert sum(result.operations.values()) > 100  # it did real work
    assert {"append", "copy", "expunge", "store", "fetch"} <= set(result.operations)
    assert result.sessions > len(users)  # reconnections happened
    assert result.fds_peak > result.fds_baseline  # sessions were open at the same time
    assert result.fds_after_rounds == [result.fds_baseline] * 2
    growth = result.rss_kb_after_rounds[-1] - result.rss_kb_after_rounds[0]
    assert growth < RSS_GROWTH_ALLOWED_KB, result.rss_kb_after_rounds
