"""The workloads: each drives one Target and returns its figures as a flat dict.

How this works: every function takes a `Target` and bounded sizes (counts, and a time
limit after which a loop stops early and says so in its result), runs from this process
and returns plain numbers, so the runner can interleave targets (run 1 of every target,
then run 2 ...) and machine noise spreads over all of them alike.

* `prepare_mailbox` fills a mailbox once (through direct Dovecot); reused when it holds
  the expected count already.
* `fetch_throughput`: one `UID FETCH 1:* (BODY.PEEK[])` of the whole mailbox; MB/s.
* `small_commands`: NOOP, SELECT, `FETCH 1:20 (FLAGS)` in turn on one connection;
  round trip p50/p99 per command.
* `sequential_logins`: connect, greeting, LOGIN, LOGOUT, one after another; logins/s.
* `idle_sessions`: N concurrent sessions in IDLE (asyncio, ramped); a message is then
  appended to every user's INBOX and each session must see its `* n EXISTS`; DONE must
  be answered OK. Memory is read while all are held.
* `mixed`: K concurrent clients, each on its own user and mailbox, doing a random
  (seeded) imaptest-like mix of SELECT/FETCH/STORE/APPEND/EXPUNGE; ops/s and latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Final

from bench.client import AsyncImap, BlockingImap, ImapError, make_message
from bench.services import Target

PASSWORD: Final = "pass"
Figures = dict[str, float]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def prepare_mailbox(target: Target, user: str, mailbox: str, count: int, size: int) -> float:
    """Make `mailbox` of `user` hold exactly `count` messages of `size`; seconds spent."""
    started = time.perf_counter()
    client = BlockingImap(target.host, target.port, timeout=300)
    try:
        client.login(user, PASSWORD)
        try:
            have = client.command(f'SELECT "{mailbox}"').exists()
        except ImapError:
            client.command(f'CREATE "{mailbox}"')
            have = client.command(f'SELECT "{mailbox}"').exists()
        if have != count:
            if have:
                client.command("STORE 1:* +FLAGS.SILENT (\\Deleted)")
                client.command("EXPUNGE")
            client.command("CLOSE")
            for number in range(count):
                client.append(mailbox, make_message(number, size, mailbox), "\\Seen")
    finally:
        client.logout()
    return time.perf_counter() - started


def fetch_throughput(
    target: Target, user: str, mailbox: str, cpu: Callable[[], float] | None = None
) -> Figures:
    client = BlockingImap(target.host, target.port, timeout=300)
    try:
        client.login(user, PASSWORD)
        client.command(f'EXAMINE "{mailbox}"')
        cpu_before = cpu() if cpu else 0.0
        started = time.perf_counter()
        reply = client.command("UID FETCH 1:* (BODY.PEEK[])", keep_untagged=False)
        seconds = time.perf_counter() - started
        cpu_used = (cpu() - cpu_before) if cpu else float("nan")
    finally:
        client.logout()
    figures: Figures = {
        "MBps": reply.literal_octets / seconds / 1e6,
        "octets": reply.literal_octets,
        "messages": reply.literals,
        "seconds": seconds,
    }
    if cpu is not None and reply.literal_octets:
        figures["cpu_s_per_GB"] = cpu_used / (reply.literal_octets / 1e9)
    return figures


SMALL_COMMANDS: Final = (("noop", "NOOP"), ("select", "SELECT {mailbox}"))
SMALL_COMMANDS_ALL: Final = (*SMALL_COMMANDS, ("fetch_flags", "FETCH 1:20 (FLAGS)"))


def small_commands(
    target: Target, user: str, mailbox: str, rounds: int, time_limit: float
) -> dict[str, list[float]]:
    """Round-trip times in ms per command kind (raw samples, merged by the runner)."""
    samples: dict[str, list[float]] = {kind: [] for kind, _ in SMALL_COMMANDS_ALL}
    client = BlockingImap(target.host, target.port, timeout=60)
    try:
        client.login(user, PASSWORD)
        client.command(f'SELECT "{mailbox}"')
        texts = [(kind, text.format(mailbox=f'"{mailbox}"')) for kind, text in SMALL_COMMANDS_ALL]
        for _ in range(10):  # warm-up, not counted
            for _kind, text in texts:
                client.command(text)
        deadline = time.monotonic() + time_limit
        for _ in range(rounds):
            for kind, text in texts:
                started = time.perf_counter()
                client.command(text)
                samples[kind].append((time.perf_counter() - started) * 1000)
            if time.monotonic() > deadline:
                break
    finally:
        client.logout()
    return samples


def summarize_latency(samples: dict[str, list[float]]) -> Figures:
    figures: Figures = {}
    everything: list[float] = []
    for kind, values in samples.items():
        figures[f"{kind}_p50_ms"] = percentile(values, 50)
        figures[f"{kind}_p99_ms"] = percentile(values, 99)
        everything.extend(values)
    figures["all_p50_ms"] = percentile(everything, 50)
    figures["all_p99_ms"] = percentile(everything, 99)
    figures["samples"] = len(everything)
    return figures


def sequential_logins(
    target: Target, count: int, time_limit: float, cpu: Callable[[], float] | None = None
) -> Figures:
    latencies: list[float] = []
    failed = 0
    cpu_before = cpu() if cpu else 0.0
    started = time.perf_counter()
    deadline = time.monotonic() + time_limit
    for number in range(count):
        one = time.perf_counter()
        try:
            client = BlockingImap(target.host, target.port, timeout=30)
            try:
                client.login(f"user{number % 50 + 1}", PASSWORD)
                client.command("LOGOUT")
            finally:
                client.close()
            latencies.append((time.perf_counter() - one) * 1000)
        except (ImapError, OSError):
            failed += 1
        if time.monotonic() > deadline:
            break
    seconds = time.perf_counter() - started
    done = len(latencies) + failed
    figures: Figures = {
        "per_sec": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "count": done,
        "failed": failed,
    }
    if cpu is not None and latencies:
        figures["cpu_ms_per_login"] = (cpu() - cpu_before) * 1000 / len(latencies)
    return figures


# ----------------------------------------------------------------------------- IDLE


async def _idle_one(
    index: int,
    target: Target,
    ramp: asyncio.Semaphore,
    counts: dict[str, int],
    errors: dict[str, int],
    release: asyncio.Event,
    timeout: float,
) -> None:
    stage = "connect"
    client: AsyncImap | None = None
    try:
        async with ramp:
            client = await AsyncImap.connect(target.host, target.port, timeout=timeout)
            stage = "login"
            await client.command(f'LOGIN "user{index % 50 + 1}" "{PASSWORD}"')
            stage = "select"
            exists = (await client.command("SELECT INBOX")).exists() or 0
            stage = "idle"
            tag = client.next_tag()
            await client.send(tag + b" IDLE\r\n")
            while not (await client.readline()).startswith(b"+"):
                pass
            counts["idling"] += 1
        stage = "answer"
        await release.wait()
        while True:
            line = await client.readline()
            parts = line.split()
            if len(parts) >= 3 and parts[2].upper() == b"EXISTS" and int(parts[1]) > exists:
                break
        counts["answered"] += 1
        stage = "done"
        await client.send(b"DONE\r\n")
        await client.read_reply(tag, "IDLE")
        counts["done_ok"] += 1
        stage = "logout"
        await client.command("LOGOUT")
    except (ImapError, OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        key = f"{stage}: {type(error).__name__}: {str(error)[:60]}"
        errors[key] = errors.get(key, 0) + 1
    finally:
        if client is not None:
            await client.close()


async def _idle_sessions(
    target: Target,
    sessions: int,
    memory: Callable[[], dict[str, float]],
    deliver: Callable[[], None],
    timeout: float,
    ramp_width: int,
) -> Figures:
    counts = {"idling": 0, "answered": 0, "done_ok": 0}
    errors: dict[str, int] = {}
    release = asyncio.Event()
    ramp = asyncio.Semaphore(ramp_width)
    before = memory()
    started = time.perf_counter()
    tasks = [
        asyncio.ensure_future(_idle_one(i, target, ramp, counts, errors, release, timeout))
        for i in range(sessions)
    ]
    setup_deadline = time.monotonic() + max(60.0, sessions / 20)
    while counts["idling"] + sum(errors.values()) < sessions:
        if time.monotonic() > setup_deadline:
            break
        await asyncio.sleep(0.1)
    setup_seconds = time.perf_counter() - started
    await asyncio.sleep(1.0)  # let the target settle before reading its memory
    held = memory()
    release.set()
    await asyncio.to_thread(deliver)
    answer_started = time.perf_counter()
    await asyncio.wait(tasks, timeout=timeout * 3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    figures: Figures = {
        "sessions": sessions,
        "idling": counts["idling"],
        "answered": counts["answered"],
        "done_ok": counts["done_ok"],
        "errors": sum(errors.values()),
        "setup_s": setup_seconds,
        "answer_s": time.perf_counter() - answer_started,
    }
    for key, value in held.items():
        figures[f"{key}_held"] = value
        figures[f"{key}_before"] = before.get(key, float("nan"))
    if "rss_kb" in held and counts["idling"]:
        figures["kb_per_session"] = (held["rss_kb"] - before["rss_kb"]) / counts["idling"]
        figures["rss_mb_held"] = held["rss_kb"] / 1024
    if "pss_kb" in held:
        figures["pss_mb_held"] = held["pss_kb"] / 1024
    for key, value in sorted(errors.items())[:5]:
        print(f"[bench] idle {target.name}: {value} x {key}", flush=True)
    return figures


def idle_sessions(
    target: Target,
    sessions: int,
    memory: Callable[[], dict[str, float]],
    deliver: Callable[[], None],
    *,
    timeout: float = 60.0,
    ramp_width: int = 100,
) -> Figures:
    return asyncio.run(_idle_sessions(target, sessions, memory, deliver, timeout, ramp_width))


def deliver_to_all(target: Target, users: int) -> None:
    """Append one small message to the INBOX of user1..user<users> (wakes their IDLEs)."""
    for number in range(1, users + 1):
        client = BlockingImap(target.host, target.port, timeout=60)
        try:
            client.login(f"user{number}", PASSWORD)
            client.append("INBOX", make_message(number, 2000, "idle-wakeup"))
        finally:
            client.logout()


# ---------------------------------------------------------------------------- mixed

MIXED_OPS: Final = (
    ("select", 10),
    ("fetch_flags", 15),
    ("fetch_body", 25),
    ("fetch_headers", 15),
    ("store", 15),
    ("append", 10),
    ("expunge", 10),
)


async def _mixed_client(
    target: Target,
    user: str,
    mailbox: str,
    ops: int,
    rng: random.Random,
    deadline: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    client = await AsyncImap.connect(target.host, target.port, timeout=60)
    names = [name for name, _ in MIXED_OPS]
    weights = [weight for _, weight in MIXED_OPS]
    try:
        await client.command(f'LOGIN "{user}" "{PASSWORD}"')
        count = (await client.command(f'SELECT "{mailbox}"')).exists() or 0
        for number in range(ops):
            if time.monotonic() > deadline:
                break
            op = rng.choices(names, weights)[0]
            if count == 0 and op not in ("select", "append"):
                op = "append"
            one = rng.randint(1, max(1, count))
            started = time.perf_counter()
            try:
                if op == "select":
                    reply = await client.command(f'SELECT "{mailbox}"')
                elif op == "fetch_flags":
                    reply = await client.command("FETCH 1:* (FLAGS UID)")
                elif op == "fetch_body":
                    reply = await client.command(f"FETCH {one} (BODY.PEEK[] FLAGS)")
                elif op == "fetch_headers":
                    low = max(1, one - 10)
                    reply = await client.command(
                        f"FETCH {low}:{one} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
                    )
                elif op == "store":
                    sign = rng.choice("+-")
                    reply = await client.command(f"STORE {one} {sign}FLAGS (\\Flagged)")
                elif op == "append":
                    size = rng.choice((1500, 4000, 20000))
                    reply = await client.append(mailbox, make_message(number, size, user))
                else:
                    await client.command(f"STORE {one} +FLAGS.SILENT (\\Deleted)")
                    reply = await client.command("EXPUNGE")
            except ImapError as error:
                errors.append(f"{op}: {error}")
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            for line in reply.untagged:
                parts = line.split()
                if len(parts) >= 3 and parts[2].upper() == b"EXISTS":
                    count = int(parts[1])
                elif len(parts) >= 3 and parts[2].upper() == b"EXPUNGE":
                    count -= 1
        await client.command("LOGOUT")
    finally:
        await client.close()


def mixed(
    target: Target,
    clients: int,
    ops: int,
    mailbox: str,
    *,
    seed: int,
    time_limit: float,
    cpu: Callable[[], float] | None = None,
) -> Figures:
    latencies: list[float] = []
    errors: list[str] = []
    cpu_before = cpu() if cpu else 0.0

    async def run_all() -> None:
        deadline = time.monotonic() + time_limit
        await asyncio.gather(
            *(
                _mixed_client(
                    target,
                    f"user{index + 1}",
                    mailbox,
                    ops,
                    random.Random(seed * 1000 + index),
                    deadline,
                    latencies,
                    errors,
                )
                for index in range(clients)
            )
        )

    started = time.perf_counter()
    asyncio.run(run_all())
    seconds = time.perf_counter() - started
    figures: Figures = {
        "ops_per_sec": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "ops": len(latencies),
        "errors": len(errors),
    }
    if cpu is not None and latencies:
        figures["cpu_ms_per_op"] = (cpu() - cpu_before) * 1000 / len(latencies)
    return figures
