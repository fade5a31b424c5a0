"""Soak: many concurrent imaplib clients doing random work through the proxy, for a while.

How this works: `python -m bench.soak [--seconds 60] [--clients 24]` starts a private
Dovecot (tests/support/dovecot.py, modern profile) and the proxy as its own process
(`python -m imap_proxy run`), so its file descriptors (/proc/PID/fd) and memory are its
own. tests/integration/test_soak.py runs the same `soak()` for ~10 s in the normal suite.

Each client thread owns one user and keeps a model of that user's two mailboxes (INBOX
and Soak): uid -> (Message-ID, flags). It loops, until the time is up, over random
operations through the proxy - APPEND (with flags), SELECT, UID FETCH (checked against
the model there and then), UID STORE +/-FLAGS, UID COPY (the COPYUID says the new uid),
UID STORE \\Deleted + EXPUNGE - then logs out. In each round, a few clients reconnect
(a new session) so connection churn is part of the load.

At the end, every mailbox is read directly on Dovecot and must equal the model exactly
(no lost, duplicated or mis-flagged message), and, once every session has closed, the
proxy's open file descriptors must be back at the baseline taken after a warm-up round;
its RSS is reported (baseline, peak, after). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty, Queue

if __package__ in (None, ""):  # `python bench/soak.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.services import rss_pss_kb

MAILBOXES = ("INBOX", "Soak")
FLAGS = ("\\Seen", "\\Flagged", "$Soak")
_FETCH_LINE = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)")
_MESSAGE_ID = re.compile(rb"Message-ID: <([^>]+)>", re.IGNORECASE)
Model = dict[str, dict[int, tuple[str, frozenset[str]]]]


@dataclass
class SoakResult:
    seconds: float
    clients: int
    operations: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    fds_baseline: int = 0
    fds_peak: int = 0
    fds_after: int = 0
    rss_kb_baseline: int = 0
    rss_kb_peak: int = 0
    rss_kb_after: int = 0
    fds_after_rounds: list[int] = field(default_factory=list)
    rss_kb_after_rounds: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        fds_back = all(count == self.fds_baseline for count in self.fds_after_rounds)
        return not self.errors and not self.mismatches and fds_back


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mailbox_state(client: imaplib.IMAP4, mailbox: str) -> dict[int, tuple[str, frozenset[str]]]:
    """uid -> (Message-ID, flags without \\Recent) of every message in `mailbox`."""
    status, data = client.select(mailbox, readonly=True)
    if status != "OK":
        raise RuntimeError(f"EXAMINE {mailbox}: {data!r}")
    state: dict[int, tuple[str, frozenset[str]]] = {}
    if int(data[0] or 0) == 0:
        return state
    status, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    if status != "OK":
        raise RuntimeError(f"UID FETCH in {mailbox}: {data!r}")
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid, flags = 0, frozenset[str]()
        for found in _FETCH_LINE.finditer(item[0]):
            if found.group(1):
                uid = int(found.group(1))
            else:
                names = found.group(2).decode().split()
                flags = frozenset(name for name in names if name != "\\Recent")
        message_id = _MESSAGE_ID.search(item[1])
        state[uid] = (message_id.group(1).decode() if message_id else "", flags)
    return state


def _new_uid(client: imaplib.IMAP4, data: Sequence[object], code: str) -> int:
    """The uid an APPENDUID / COPYUID code gave (imaplib files codes as untagged data)."""
    text = b" ".join(x for x in data if isinstance(x, bytes))
    found = re.search(rb"\[" + code.encode() + rb" ([^\]]+)\]", text)
    if found is not None:
        return int(found.group(1).split()[-1])
    codes = client.untagged_responses.pop(code, None)
    if not codes or not isinstance(codes[-1], bytes):
        raise RuntimeError(f"no {code} in {text!r}")
    return int(codes[-1].split()[-1])


class Worker:
    """One client thread: one user, one model, random operations through the proxy."""

    def __init__(self, port: int, user: str, password: str, seed: int) -> None:
        self.port = port
        self.user = user
        self.password = password
        self.random = random.Random(seed)
        self.model: Model = {name: {} for name in MAILBOXES}
        self.operations: dict[str, int] = {}
        self.sessions = 0
        self.errors: list[str] = []
        self._serial = 0
        self._client: imaplib.IMAP4 | None = None
        self._selected = "INBOX"

    def _connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        client.login(self.user, self.password)
        self.sessions += 1
        client.select(self._selected)
        return client

    def _count(self, name: str) -> None:
        self.operations[name] = self.operations.get(name, 0) + 1

    def _message(self) -> tuple[str, bytes]:
        self._serial += 1
        message_id = f"{self.user}.{self._serial}@soak.example"
        body = os.urandom(self.random.randint(0, 3000)).hex().encode()
        message = (
            (
                f"From: soak@example.org\r\nTo: {self.user}@example.org\r\n"
                f"Subject: soak {self._serial}\r\nMessage-ID: <{message_id}>\r\n\r\n"
            ).encode()
            + body
            + b"\r\n"
        )
        return message_id, message

    def setup(self) -> None:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        client.login(self.user, self.password)
        client.create("Soak")
        client.logout()

    def run_until(self, deadline: float) -> None:
        try:
            self._client = self._connect()
            while time.monotonic() < deadline:
                self.step()
            self._client.logout()
        except Exception as error:  # reported, with the user, to the caller
            self.errors.append(f"{self.user}: {type(error).__name__}: {error}")

    def step(self) -> None:
        client = self._client
        assert client is not None
        action = self.random.choice(
            [
                "append",
                "append",
                "select",
                "fetch",
                "store",
                "store",
                "copy",
                "expunge",
                "reconnect",
            ]
        )
        box = self.model[self._selected]
        if action == "append":
            target = self.random.choice(MAILBOXES)
            flags = frozenset(self.random.sample(FLAGS, self.random.randint(0, 2)))
            message_id, message = self._message()
            status, data = client.append(target, "(" + " ".join(sorted(flags)) + ")", None, message)
            assert status == "OK", data
            self.model[target][_new_uid(client, data, "APPENDUID")] = (message_id, flags)
        elif action == "select":
            self._selected = self.random.choice(MAILBOXES)
            assert client.select(self._selected)[0] == "OK"
        elif action == "fetch":
            client.check()  # see what this session did itself
            seen = mailbox_state(client, self._selected)
            if seen != self.model[self._selected]:
                raise AssertionError(f"{self._selected} differs: {seen} != {box}")
            client.select(self._selected)
        elif action == "store" and box:
            uid = self.random.choice(sorted(box))
            flag = self.random.choice(FLAGS)
            add = self.random.random() < 0.6
            status, data = client.uid("STORE", str(uid), "+FLAGS" if add else "-FLAGS", flag)
            assert status == "OK", data
            message_id, flags = box[uid]
            box[uid] = (message_id, flags | {flag} if add else flags - {flag})
        elif action == "copy" and box:
            uid = self.random.choice(sorted(box))
            other = MAILBOXES[1 - MAILBOXES.index(self._selected)]
            status, data = client.uid("COPY", str(uid), other)
            assert status == "OK", data
            self.model[other][_new_uid(client, data, "COPYUID")] = box[uid]
        elif action == "expunge" and box:
            uid = self.random.choice(sorted(box))
            status, data = client.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
            assert status == "OK", data
            assert client.expunge()[0] == "OK"
            del box[uid]
        elif action == "reconnect":
            client.logout()
            self._client = self._connect()
        else:
            return
        self._count(action)


def soak(
    port: int,
    pid: int,
    users: list[tuple[str, str]],
    seconds: float,
    upstream: tuple[str, int],
    rounds: int = 2,
) -> SoakResult:
    """Run the soak through the proxy on `port` (process `pid`); check against `upstream`.

    The time is split into `rounds`; after each, every session has closed, and the
    proxy's fds and RSS are read: fds must be back at the baseline each time, and RSS
    after the last round compared with after the first (growth between rounds is a leak;
    the first round's growth is the allocator keeping what it once needed).
    """
    workers = [Worker(port, name, password, seed) for seed, (name, password) in enumerate(users)]
    for worker in workers:
        worker.setup()  # the warm-up: every code path the soak uses has run once
    result = SoakResult(seconds=seconds, clients=len(workers))
    result.fds_baseline = _settled_fds(pid, None)
    result.rss_kb_baseline = rss_pss_kb(pid)[0]
    result.fds_peak, result.rss_kb_peak = result.fds_baseline, result.rss_kb_baseline
    for _ in range(rounds):
        deadline = time.monotonic() + seconds / rounds
        threads = [threading.Thread(target=w.run_until, args=(deadline,)) for w in workers]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            result.fds_peak = max(result.fds_peak, open_fds(pid))
            result.rss_kb_peak = max(result.rss_kb_peak, rss_pss_kb(pid)[0])
            time.sleep(0.2)
        for thread in threads:
            thread.join(120)
        result.fds_after_rounds.append(_settled_fds(pid, result.fds_baseline))
        result.rss_kb_after_rounds.append(rss_pss_kb(pid)[0])
    result.fds_after = result.fds_after_rounds[-1]
    result.rss_kb_after = result.rss_kb_after_rounds[-1]
    for worker in workers:
        result.errors += worker.errors
        result.sessions += worker.sessions
        for name, count in worker.operations.items():
            result.operations[name] = result.operations.get(name, 0) + count
        direct = imaplib.IMAP4(*upstream, timeout=60)
        direct.login(worker.user, worker.password)
        for mailbox in MAILBOXES:
            if mailbox_state(direct, mailbox) != worker.model[mailbox]:
                result.mismatches.append(f"{worker.user}/{mailbox}")
        direct.logout()
    return result


def _settled_fds(pid: int, target: int | None) -> int:
    """The proxy's fd count once closing sessions are gone (or after 15 s, whatever it is)."""
    count = open_fds(pid)
    for _ in range(150):
        time.sleep(0.1)
        now = open_fds(pid)
        if (target is not None and now <= target) or (target is None and now == count):
            return now
        count = now
    return count


@contextlib.contextmanager
def proxy_process(upstream: str, log_path: Path) -> Iterator[tuple[int, int]]:
    """The proxy as its own process: (pid, port). Logs (JSON) go to `log_path`."""
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "imap_proxy", "run", "--listen", "127.0.0.1:0",
         "--upstream", upstream, "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    stdout = process.stdout
    ports: Queue[int] = Queue()

    def pump() -> None:
        for line in stdout:
            log.write(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "listening":
                    ports.put(int(event["port"]))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        try:
            port = ports.get(timeout=30)
        except Empty:
            raise RuntimeError(f"the proxy did not start; see {log_path}") from None
        yield process.pid, port
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(10)
        stdout.close()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    from tests.support.dovecot import start_dovecot
    from tests.support.tls import new_ca, write_tls_files

    with tempfile.TemporaryDirectory(prefix="imap-proxy-soak-") as scratch:
        tls = write_tls_files(new_ca(), Path(scratch) / "tls")
        dovecot = start_dovecot("modern", tls)
        try:
            users = [
                (user.name, user.password)
                for user in (dovecot.add_user() for _ in range(args.clients))
            ]
            upstream = (dovecot.host, dovecot.port)
            with proxy_process(f"{dovecot.host}:{dovecot.port}", Path(scratch) / "proxy.log") as (
                pid,
                port,
            ):
                result = soak(port, pid, users, args.seconds, upstream, args.rounds)
        finally:
            dovecot.stop()
    figures = asdict(result) | {"ok": result.ok}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
