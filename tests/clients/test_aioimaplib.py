"""aioimaplib (asyncio) through the proxy: the everyday operations and IDLE, both profiles.

How this works: the same scenario as test_python_libraries.py, written for aioimaplib's
coroutine API and run with `asyncio.run` from a plain test (the suite's own async tests use
trio). Every await is bounded by aioimaplib's own timeout; IDLE waits for the EXISTS that a
direct delivery to Dovecot causes. The final state is read directly from Dovecot.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import re
import time

import aioimaplib  # type: ignore[import-untyped]

from tests.clients.conftest import CompatScenario
from tests.clients.support import TRASH_FOLDER, make_message, server_state
from tests.clients.test_python_libraries import IDLE_WAIT, assert_everyday_state, seed
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy

OK = "OK"


async def uid_of(client: aioimaplib.IMAP4, subject: str) -> str:
    response = await client.uid_search("SUBJECT", subject, charset=None)
    assert response.result == OK, response
    (uid,) = response.lines[0].split()
    return str(uid.decode())


async def everyday_session(port: int, upstream: DovecotInstance, user: MailUser) -> list[bytes]:
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(_error: Exception | None) -> None:
        if not lost.done():
            lost.set_result(None)

    client = aioimaplib.IMAP4("127.0.0.1", port, timeout=30, conn_lost_cb=connection_lost)
    try:
        await client.wait_hello_from_server()
        assert (await client.login(user.name, user.password)).result == OK
        listing = await client.list('""', "*")
        assert listing.result == OK
        assert any(line.endswith(TRASH_FOLDER[upstream.profile].encode()) for line in listing.lines)
        assert (await client.create("Archive")).result == OK
        selected = await client.select("INBOX")
        assert selected.result == OK and b"3 EXISTS" in selected.lines
        one_uid = await uid_of(client, "one")
        two_uid = await uid_of(client, "two")
        three_uid = await uid_of(client, "three")
        fetched = await client.uid("fetch", one_uid, "(BODY.PEEK[])")
        assert fetched.result == OK
        assert bytes(fetched.lines[1]) == make_message("one"), fetched.lines
        assert (await client.uid("store", one_uid, "+FLAGS", "(\\Flagged)")).result == OK
        assert (await client.uid("copy", two_uid, "Archive")).result == OK
        appended = await client.append(make_message("four"), mailbox="INBOX", flags="(\\Seen)")
        assert appended.result == OK, appended
        assert (await client.uid("store", three_uid, "+FLAGS", "(\\Deleted)")).result == OK
        expunged = await client.expunge()
        assert expunged.result == OK and b"3 EXPUNGE" in expunged.lines

        idle = await client.idle_start(timeout=IDLE_WAIT)
        await asyncio.to_thread(upstream.append, user.name, make_message("pushed"))
        announced: list[bytes] = []
        deadline = time.monotonic() + IDLE_WAIT
        while not any(re.search(rb"\bEXISTS\b", line) for line in announced):
            assert time.monotonic() < deadline, announced
            announced += await client.wait_server_push(timeout=IDLE_WAIT)
        client.idle_done()
        assert (await asyncio.wait_for(idle, IDLE_WAIT)).result == OK
        await client.logout()
    finally:
        # aioimaplib never closes its transport itself: close it, and wait until it is
        # gone, before asyncio.run() ends
        if client.protocol.transport is not None:
            client.protocol.transport.close()
        await asyncio.wait_for(lost, 30)
    return announced


def test_aioimaplib_everyday_operations_and_idle(
    proxy: RunningProxy, upstream: DovecotInstance, mail_user: MailUser, compat: CompatScenario
) -> None:
    compat.set(
        kind="library",
        client="aioimaplib",
        version=importlib.metadata.version("aioimaplib"),
        scenario="everyday operations + IDLE",
    )
    seed(upstream, mail_user)
    announced = asyncio.run(everyday_session(proxy.port, upstream, mail_user))
    gc.collect()  # an unclosed transport would warn now, in this test, not in a later one
    assert b"4 EXISTS" in announced, announced
    assert_everyday_state(server_state(upstream, mail_user), idled=True)
