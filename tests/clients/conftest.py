"""Fixtures for the client compatibility tests, and the results file they feed.

How this works: `upstream` is parametrized over the Dovecot profiles (modern, legacy), so
every client test runs once per profile; `proxy` is the real server in front of that
upstream and `mail_user` a fresh, empty user on it. A test names its client and scenario
through the `compat` fixture (`compat.set(client=..., kind=..., version=..., scenario=...)`); when
the test is over, the fixture's teardown turns the test's outcome (passed, failed, xfailed,
skipped, with the first line of the failure as the note) into one result row. At the end of
the session the rows are written as JSON to the file named by IMAP_PROXY_COMPAT_RESULTS (if
set); `tools/compat_table.py` renders that file as the README's compatibility table.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clients.support import PROFILES, client_proxy_config
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy, running_proxy

RESULTS_ENV = "IMAP_PROXY_COMPAT_RESULTS"
_RESULTS_KEY = pytest.StashKey[list["CompatResult"]]()
_REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
KINDS = ("mail client", "library", "replay")
NewUser = Callable[[DovecotInstance], MailUser]


@dataclass(frozen=True, slots=True)
class CompatResult:
    """One row of the compatibility table."""

    client: str
    kind: str  # mail client | library | replay
    version: str
    scenario: str
    profile: str
    result: str  # passed | failed | xfailed | skipped
    note: str
    test: str


@dataclass(slots=True)
class CompatScenario:
    """What a test says about itself; filled in by the test, read at teardown."""

    client: str = ""
    kind: str = ""
    version: str = ""
    scenario: str = ""
    note: str = ""

    def set(self, *, client: str, kind: str, version: str, scenario: str, note: str = "") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.client, self.kind, self.version = client, kind, version
        self.scenario, self.note = scenario, note


# -- hooks -------------------------------------------------------------------------------
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents and "upstream" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.dovecot)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS_KEY, {})[report.when] = report
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(RESULTS_ENV)
    rows = session.config.stash.get(_RESULTS_KEY, [])
    if not target or not rows:
        return
    document = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "results": [asdict(row) for row in rows],
    }
    Path(target).write_text(json.dumps(document, indent=2) + "\n")


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(params=PROFILES)
def upstream(request: pytest.FixtureRequest) -> DovecotInstance:
    """The private Dovecot of one profile (the test runs once per profile)."""
    instance: DovecotInstance = request.getfixturevalue(f"dovecot_{request.param}")
    return instance


@pytest.fixture
def proxy(upstream: DovecotInstance) -> Iterator[RunningProxy]:
    with running_proxy(client_proxy_config(upstream)) as running:
        yield running


@pytest.fixture
def mail_user(upstream: DovecotInstance, fresh_mail_user: NewUser) -> MailUser:
    return fresh_mail_user(upstream)


@pytest.fixture
def compat(request: pytest.FixtureRequest) -> Iterator[CompatScenario]:
    """Declare the client and scenario; the outcome is recorded when the test ends."""
    scenario = CompatScenario()
    yield scenario
    if not scenario.client:
        return
    item = request.node
    reports = item.stash.get(_REPORTS_KEY, {})
    result, note = _outcome(reports)
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    profile = str(params.get("upstream") or params.get("profile") or "")
    row = CompatResult(
        client=scenario.client,
        kind=scenario.kind,
        version=scenario.version,
        scenario=scenario.scenario,
        profile=profile,
        result=result,
        note=note or scenario.note,
        test=item.nodeid,
    )
    request.config.stash.setdefault(_RESULTS_KEY, []).append(row)


def _outcome(reports: dict[str, pytest.TestReport]) -> tuple[str, str]:
    for when in ("setup", "call"):
        report = reports.get(when)
        if report is None:
            continue
        if hasattr(report, "wasxfail"):
            return ("xfailed" if report.skipped else "xpassed"), str(report.wasxfail)
        if report.failed:
            return "failed", _first_line(report)
        if report.skipped:
            return "skipped", _first_line(report)
    return ("passed", "") if "call" in reports else ("skipped", "not run")


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = str(crash.message)
    elif isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr)
    text = text.removeprefix("Skipped: ").strip()
    return text.splitlines()[0][:200] if text else ""
