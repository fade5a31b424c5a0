"""Processes as /proc shows them: find, signal and wait for them without psutil.

How this works: `list_processes()` reads /proc/<pid>/stat (state, parent, process group)
and /proc/<pid>/cmdline (the title a daemon may rewrite, e.g. Dovecot's
`verbose_proctitle`), skipping zombies, which are already dead. Tests use it to find the
processes of one server instance (by process group), to kill a chosen one, and to prove
that nothing was left running afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    parent_pid: int
    group_id: int
    title: bytes  # /proc/<pid>/cmdline: NUL-separated arguments, or a rewritten title


def list_processes() -> list[ProcessInfo]:
    """Every live (non-zombie) process, read from /proc."""
    found: list[ProcessInfo] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            continue
        found.append(ProcessInfo(int(entry), int(fields[1]), int(fields[2]), title))
    return found


def group_members(group_id: int) -> list[int]:
    """Live pids in process group `group_id`."""
    return [info.pid for info in list_processes() if info.group_id == group_id]


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {info.pid for info in list_processes()}
        left = [pid for pid in pids if pid in alive]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def signal_quietly(pid: int, signum: int) -> None:
    """Send `signum` to `pid`, ignoring a process that already exited."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (possibly owned by someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    """The pid written in a pid file, or None if missing or malformed."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
