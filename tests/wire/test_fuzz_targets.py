"""The fuzz targets of fuzz/targets.py under a bounded budget, in the normal suite.

How this works: hypothesis feeds each target both raw bytes and streams built from IMAP
fragments (which reach deeper than random bytes), 1,500 to 2,000 examples each; a target
raises only when an invariant breaks (an exception other than ProtocolError, a buffer
beyond its limit). Then each target runs under atheris for 10,000 inputs, in a
subprocess, as `python -m fuzz.run` does in the long run (docs/reliability.md), so the
runner itself is known to work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import targets

ROOT = Path(__file__).resolve().parents[2]

_FRAGMENTS = st.sampled_from(
    [
        *targets.CLIENT_WORDS,
        *targets.UPSTREAM_WORDS,
        b"{3}\r\n",
        b"{0}\r\n",
        b"~{2}\r\n",
        b"{-1}\r\n",
        b'"unterminated\r\n',
        b"(" * 20,
        b")" * 20,
        b"\x00\xff\r\n",
        b"[",
        b"]",
        b"\n",
    ]
)
imap_ish = st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=30)), max_size=30).map(b"".join)
inputs = st.one_of(st.binary(max_size=600), imap_ish)


@settings(max_examples=1500, deadline=None)
@given(inputs)
def test_framer_target(data: bytes) -> None:
    targets.framer(data)


@settings(max_examples=1500, deadline=None)
@given(inputs)
def test_command_parser_target(data: bytes) -> None:
    targets.command_parser(data)


@settings(max_examples=1500, deadline=None)
@given(inputs)
def test_response_parser_target(data: bytes) -> None:
    targets.response_parser(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=2000))
def test_session_target_on_raw_bytes(data: bytes) -> None:
    targets.session(data)


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_atheris_smoke_run(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fuzz.run", target, "--runs", "10000", "--seed", "1"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 10000 runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
