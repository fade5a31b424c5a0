"""Bringing up what the benchmarks measure, and measuring processes from the outside.

How this works: every endpoint the workloads drive is a `Target` (a name, a loopback port,
and the pid whose memory and CPU are read, when it is a process of ours). `Services` is a
context manager that starts them and stops, at the end, exactly what it started:

* a private Dovecot (tests/support/dovecot.py, `modern` profile, users user1..user50 with
  password `pass`, and service limits raised so it holds --idle sessions: imap processes
  serve many clients each). It is the IDLE workload's upstream always, and everything's
  upstream when ../shared/bench is absent;
* with ../shared/bench present: its Dovecot on 14143 and its peers (socat, nginx,
  up-imapproxy, perdition), started through its scripts when not already running;
* the proxy as its own process (`python -m imap_proxy run --config FILE`), so its CPU and
  memory are its own and not the load generator's; one per upstream and rule setting;
* `bench.relay`, an asyncio byte relay: the floor any Python relay pays.

Processes are stopped by the pid recorded at start (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "bench"
HOST = "127.0.0.1"
BENCH_USERS = {f"user{number}": "pass" for number in range(1, 51)}
SHARED_PORTS = {"dovecot": 14143, "nginx": 15143, "imapproxy": 15144, "perdition": 15145}
SHARED_PORTS["socat"] = 15146
PEERS = ("socat", "nginx", "imapproxy", "perdition")

# Appended to the private Dovecot's config: hold tens of thousands of IDLE sessions.
# imap processes serve up to 25 clients each (so 10,000 sessions need ~400 processes, not
# 10,000), logins go through long-lived imap-login processes, and one user may have
# hundreds of sessions from 127.0.0.1.
BIG_DOVECOT_CONF = """
# --- bench/services.py: limits for the benchmarks
default_client_limit = 30000
default_process_limit = 2000
default_vsz_limit = 1G
service imap {
  client_limit = 25
  service_count = 0
  process_limit = 2000
}
service imap-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 30000
  process_limit = 16
}
service anvil {
  client_limit = 30000
}
protocol imap {
  mail_max_userip_connections = 30000
}
"""


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint the workloads drive."""

    name: str
    port: int
    pid: int | None = None  # the process whose RSS/PSS/CPU is reported, when ours
    host: str = HOST


# ----------------------------------------------------------------- process figures


def rss_pss_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc (0, 0 if it is gone)."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def group_rss_pss_kb(group: int) -> tuple[int, int, int]:
    """(RSS, PSS, processes) summed over a process group (Dovecot forks many processes)."""
    rss = pss = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            one_rss, one_pss = rss_pss_kb(int(entry.name))
            rss, pss, count = rss + one_rss, pss + one_pss, count + 1
    return rss, pss, count


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (children inherit it); as root, past the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(wanted, hard), hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), max(hard, limit)))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_greeting(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing greets on {HOST}:{port} after {timeout} s")
        time.sleep(0.05)


# ----------------------------------------------------------------- processes of ours


@dataclass(slots=True)
class ChildProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _spawn(name: str, argv: list[str], log_path: Path, *, source: Path = REPO_ROOT) -> ChildProcess:
    """Start `argv` in its own session, output to `log_path`, importing from `source`."""
    environment = dict(os.environ, PYTHONPATH=str(source))
    log: IO[bytes]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=source,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    return ChildProcess(name, process, log_path)


def proxy_config_text(
    port: int,
    upstream_port: int,
    *,
    max_connections: int,
    rules_dir: Path | None,
    spare_connections: int = 0,
) -> str:
    upstream: dict[str, object] = {"address": f"{HOST}:{upstream_port}"}
    if spare_connections:
        upstream["spare_connections"] = spare_connections
    config: dict[str, object] = {
        "listen": [f"{HOST}:{port}"],
        "upstream": upstream,
        "limits": {"max_connections": max_connections},
        "log": {"format": "json", "level": "info"},
    }
    if rules_dir is not None:
        config["rules"] = str(rules_dir)
    return yaml.safe_dump(config)


# ----------------------------------------------------------------- ../shared/bench


def _script_status(script: Path, *names: str) -> dict[str, bool]:
    result = subprocess.run(
        [str(script), "status", *names], capture_output=True, text=True, check=False, timeout=60
    )
    status: dict[str, bool] = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition(":")
        status[name.strip()] = "running" in rest
    return status


class Services(contextlib.ExitStack):
    """Starts targets on demand; closing it stops everything it started."""

    def __init__(
        self,
        run_dir: Path,
        *,
        shared_dir: Path | None,
        log: IO[str],
        proxy_source: Path = REPO_ROOT,
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.proxy_source = proxy_source
        self.shared_dir = shared_dir if shared_dir and shared_dir.is_dir() else None
        self.log = log
        self.dovecot: object | None = None  # a tests.support.dovecot.DovecotInstance
        self.dovecot_port = 0
        self.dovecot_group = 0
        self.notes: list[str] = []

    def say(self, text: str) -> None:
        print(f"[bench] {text}", file=self.log, flush=True)

    # -- upstreams ----------------------------------------------------------------
    def private_dovecot(self) -> Target:
        """Start (once) the private Dovecot sized for --idle; its plain port as a Target."""
        if self.dovecot is None:
            self._start_private_dovecot()
        return Target("direct", self.dovecot_port, self.dovecot_group)

    def _start_private_dovecot(self) -> None:
        sys.path.insert(0, str(REPO_ROOT))
        from tests.support import dovecot as dovecot_support
        from tests.support.tls import new_ca, write_tls_files

        tls = write_tls_files(new_ca(), self.run_dir / "tls")
        original = dovecot_support.render_config

        def render_with_limits(*args: object, **kwargs: object) -> str:
            return original(*args, **kwargs) + BIG_DOVECOT_CONF  # type: ignore[arg-type]

        dovecot_support.render_config = render_with_limits
        try:
            instance = dovecot_support.start_dovecot("modern", tls, users=dict(BENCH_USERS))
        finally:
            dovecot_support.render_config = original
        self.callback(instance.stop)
        self.dovecot = instance
        self.dovecot_port = instance.port
        self.dovecot_group = instance.master_pid
        self.say(f"private Dovecot on {HOST}:{instance.port} (pid {instance.master_pid})")

    def shared_upstream(self) -> Target:
        """The shared Dovecot on 14143 (started through its script when not running)."""
        assert self.shared_dir is not None
        script = self.shared_dir / "upstream-dovecot.sh"
        if not _script_status(script).get("dovecot-main", False):
            self.say("starting ../shared/bench/upstream-dovecot.sh")
            subprocess.run([str(script), "start"], check=True, stdout=self.log, timeout=300)
            self.callback(self._run_script, script, "stop")
        wait_for_greeting(SHARED_PORTS["dovecot"])
        return Target("direct", SHARED_PORTS["dovecot"])

    def shared_peers(self, names: tuple[str, ...] = PEERS) -> list[Target]:
        """The peers of ../shared/bench that are (or could be started) up, as Targets."""
        assert self.shared_dir is not None
        script = self.shared_dir / "peers.sh"
        status = _script_status(script, *names)
        missing = [name for name in names if not status.get(name, False)]
        if missing:
            self.say(f"starting ../shared/bench/peers.sh start {' '.join(missing)}")
            done = subprocess.run(
                [str(script), "start", *missing], stdout=self.log, check=False, timeout=600
            )
            if done.returncode != 0:
                self.notes.append(f"peers.sh start {' '.join(missing)} failed")
            self.callback(self._run_script, script, "stop", *missing)
        targets = []
        for name in names:
            port = SHARED_PORTS[name]
            try:
                wait_for_greeting(port, timeout=10)
            except RuntimeError:
                self.notes.append(f"peer {name} not answering on {port}; left out")
                continue
            targets.append(Target(name, port))
        return targets

    def _run_script(self, script: Path, *args: str) -> None:
        subprocess.run([str(script), *args], stdout=self.log, stderr=self.log, check=False)

    # -- our processes ------------------------------------------------------------
    def proxy(
        self,
        name: str,
        upstream_port: int,
        *,
        max_connections: int,
        rules_dir: Path | None = None,
        spare_connections: int = 0,
    ) -> Target:
        port = free_port()
        config_path = self.run_dir / f"{name}.yaml"
        config_path.write_text(
            proxy_config_text(
                port,
                upstream_port,
                max_connections=max_connections,
                rules_dir=rules_dir,
                spare_connections=spare_connections,
            )
        )
        argv = [sys.executable, "-m", "imap_proxy", "run", "--config", str(config_path)]
        child = _spawn(name, argv, self.run_dir / f"{name}.log", source=self.proxy_source)
        self.callback(child.stop)
        self._wait_child(child, port)
        self.say(f"{name}: imap-proxy on {HOST}:{port} (pid {child.pid}) -> {upstream_port}")
        return Target(name, port, child.pid)

    def py_relay(self, name: str, upstream_port: int, *, engine: str = "asyncio") -> Target:
        port = free_port()
        argv = [
            *(sys.executable, "-m", "bench.relay", "--engine", engine),
            *("--listen", f"{HOST}:{port}", "--upstream", f"{HOST}:{upstream_port}"),
        ]
        child = _spawn(name, argv, self.run_dir / f"{name}.log")
        self.callback(child.stop)
        self._wait_child(child, port)
        self.say(f"{name}: {engine} relay on {HOST}:{port} (pid {child.pid}) -> {upstream_port}")
        return Target(name, port, child.pid)

    def _wait_child(self, child: ChildProcess, port: int) -> None:
        deadline = time.monotonic() + 30
        while not port_open(port):
            if child.process.poll() is not None or time.monotonic() > deadline:
                tail = child.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{child.name} did not start listening on {port}:\n{tail}")
            time.sleep(0.05)
        try:
            wait_for_greeting(port)
        except RuntimeError:
            tail = child.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{child.name} does not greet on {port}:\n{tail}") from None


@contextlib.contextmanager
def run_directory(keep: bool) -> Iterator[Path]:
    """A scratch directory for configs and logs; kept (and printed) with --keep."""
    path = Path(tempfile.mkdtemp(prefix="imap-proxy-bench-"))
    try:
        yield path
    finally:
        if not keep:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
