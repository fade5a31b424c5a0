"""The proxy in front of a real, private Dovecot, driven by real clients.

Every test starts the real server (`serve`) on port 0 in front of a Dovecot instance that
the fixtures start, talks to it with imaplib, imapclient or a raw socket, and where mail is
written checks the result directly on Dovecot.
"""

from __future__ import annotations

import imaplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import imapclient
import pytest

from imap_proxy.config import ProxyConfig, TLSConfig, UpstreamConfig, UpstreamSecurity
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.tls import TlsFiles

BIG_SIZE = 40_000_000  # more than every socket buffer and proxy queue on the way
NewUser = Callable[[DovecotInstance], MailUser]


def proxy_config(
    upstream: DovecotInstance,
    tls: TlsFiles | None = None,
    *,
    security: UpstreamSecurity = UpstreamSecurity.PLAIN,
    **extra: object,
) -> ProxyConfig:
    port = upstream.tls_port if security is UpstreamSecurity.TLS else upstream.port
    assert port is not None
    fields: dict[str, object] = {
        "listen": ["127.0.0.1:0"],
        "upstream": UpstreamConfig(
            address=f"127.0.0.1:{port}",
            security=security,
            ca_file=upstream.ca_file,
            server_name="localhost",
        ),
    }
    if tls is not None:
        fields["tls"] = TLSConfig(cert=tls.cert_file, key=tls.key_file)
        fields["listen_tls"] = ["127.0.0.1:0"]
    fields.update(extra)
    return ProxyConfig.model_validate(fields)


@pytest.fixture
def modern_proxy(dovecot_modern: DovecotInstance, tls_files: TlsFiles) -> Iterator[RunningProxy]:
    with running_proxy(proxy_config(dovecot_modern, tls_files)) as proxy:
        yield proxy


def make_message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        b"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: "
        + subject.encode()
        + b"\r\nMessage-ID: <"
        + subject.replace(" ", ".").encode()
        + b"@example.org>\r\n\r\n"
        + body
    )


def login(proxy: RunningProxy, user: MailUser) -> imaplib.IMAP4:
    client = proxy.imap()
    client.login(user.name, user.password)
    return client


# --- everyday operations ------------------------------------------------------------


def test_login_list_select_fetch_with_imaplib(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    dovecot_modern.append(user.name, make_message("first"))
    client = login(modern_proxy, user)
    caps = client.capabilities
    assert "IMAP4REV1" in caps and "LITERAL+" in caps and "ID" in caps
    assert not any(c.startswith("COMPRESS") for c in caps)
    status, folders = client.list()
    assert status == "OK"
    names = b"\n".join(f for f in folders if isinstance(f, bytes))
    assert b"INBOX" in names and b"\\Trash" in names
    status, count = client.select("INBOX")
    assert (status, count) == ("OK", [b"1"])
    status, data = client.fetch("1", "(BODY.PEEK[])")
    assert status == "OK"
    assert isinstance(data[0], tuple) and data[0][1] == make_message("first")
    assert client.logout()[0] == "BYE"


def test_authenticate_plain_with_imapclient(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    client = imapclient.IMAPClient("127.0.0.1", port=modern_proxy.port, ssl=False, timeout=30)
    client.plain_login(user.name, user.password)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    assert b"INBOX" in [name.encode() for _flags, _delim, name in client.list_folders()]
    client.logout()


def test_wrong_password_is_refused_through_the_proxy(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    client = modern_proxy.imap()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(user.name, "not-the-password")
    client.login(user.name, user.password)
    client.logout()


@pytest.mark.parametrize("profile", ["dovecot_modern", "dovecot_legacy_noliteralplus"])
def test_append_with_synchronizing_and_non_synchronizing_literals(
    profile: str, request: pytest.FixtureRequest, fresh_mail_user: NewUser
) -> None:
    upstream: DovecotInstance = request.getfixturevalue(profile)
    user = fresh_mail_user(upstream)
    with running_proxy(proxy_config(upstream)) as proxy:
        client = login(proxy, user)
        sync = make_message("synchronizing")
        assert client.append("INBOX", None, None, sync)[0] == "OK"
        client.logout()
        # LITERAL+ by hand: the proxy advertises it whatever the upstream has.
        raw = proxy.raw()
        greeting = raw.read_line()
        assert b"LITERAL+" in greeting
        plus = make_message("non synchronizing")
        raw.send(
            b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n"
            % (len(user.name), user.name.encode(), len(user.password), user.password.encode())
        )
        assert raw.read_until(b"a OK").endswith(b"a OK")
        raw.read_line()
        raw.send(b"b APPEND INBOX (\\Seen) {%d+}\r\n%s\r\nc NOOP\r\n" % (len(plus), plus))
        answer = raw.read_until(b"c OK")
        assert b"b OK" in answer
        # The upstream's `+` never reaches a LITERAL+ client.
        assert b"\r\n+" not in b"\r\n" + answer
        raw.close()
    assert upstream.mailbox_messages(user.name) == [sync, plus]


def test_ten_megabyte_fetch_is_byte_identical(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    body = bytes(range(33, 127)) * 1000
    big = make_message("big", (body + b"\r\n") * 110)  # about 10.4 MB
    assert len(big) > 10_000_000
    dovecot_modern.append(user.name, big)
    client = login(modern_proxy, user)
    client.select("INBOX", readonly=True)
    status, data = client.fetch("1", "(BODY.PEEK[])")
    assert status == "OK" and isinstance(data[0], tuple)
    assert data[0][1] == big
    client.logout()


def test_idle_receives_exists_when_another_session_appends(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    client = imapclient.IMAPClient("127.0.0.1", port=modern_proxy.port, ssl=False, timeout=30)
    client.login(user.name, user.password)
    client.select_folder("INBOX")
    client.idle()
    other = login(modern_proxy, user)
    other.append("INBOX", None, None, make_message("wake up"))
    other.logout()
    responses = client.idle_check(timeout=20)
    client.idle_done()
    assert (1, b"EXISTS") in responses
    client.logout()


def test_pipelined_commands_all_answered_in_order_of_tags(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    raw = modern_proxy.raw()
    raw.read_line()
    commands = [f"p{i} NOOP\r\n".encode() for i in range(50)]
    raw.send(
        f"l LOGIN {user.name} {user.password}\r\n".encode()
        + b"s SELECT INBOX\r\n"
        + b"".join(commands)
        + b"z LOGOUT\r\n"
    )
    transcript = raw.read_all()
    for tag in [b"l", b"s", *[f"p{i}".encode() for i in range(50)], b"z"]:
        assert b"\r\n" + tag + b" OK" in b"\r\n" + transcript
    assert b"* BYE" in transcript
    raw.close()


def test_id_is_forwarded_to_an_upstream_with_id(
    modern_proxy: RunningProxy,
) -> None:
    client = modern_proxy.imap()
    typ, _data = client.xatom("ID", '("name" "imaplib" "version" "3.11")')
    assert typ == "OK"
    answers = [a for a in client.untagged_responses.get("ID", []) if isinstance(a, bytes)]
    assert any(b'"name" "Dovecot"' in answer for answer in answers)
    client.logout()


def test_id_is_answered_by_the_proxy_for_a_legacy_upstream(
    dovecot_legacy: DovecotInstance,
) -> None:
    with running_proxy(proxy_config(dovecot_legacy)) as proxy:
        client = proxy.imap()
        assert "ID" in client.capabilities and "MOVE" not in client.capabilities
        typ, _ = client.xatom("ID", '("name" "imaplib")')
        assert typ == "OK"
        assert client.untagged_responses.get("ID") == [b"NIL"]
        client.logout()


# --- TLS -----------------------------------------------------------------------------


def test_client_starttls_then_login(
    modern_proxy: RunningProxy,
    dovecot_modern: DovecotInstance,
    fresh_mail_user: NewUser,
    tls_files: TlsFiles,
) -> None:
    user = fresh_mail_user(dovecot_modern)
    client = modern_proxy.imap()
    assert "STARTTLS" in client.capabilities
    client.starttls(ssl_context=tls_files.client_context())
    assert "STARTTLS" not in client.capabilities
    client.login(user.name, user.password)
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_client_implicit_tls(
    modern_proxy: RunningProxy,
    dovecot_modern: DovecotInstance,
    fresh_mail_user: NewUser,
    tls_files: TlsFiles,
) -> None:
    user = fresh_mail_user(dovecot_modern)
    client = modern_proxy.imap_tls(tls_files.client_context())
    assert "STARTTLS" not in client.capabilities
    client.login(user.name, user.password)
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_plaintext_pipelined_after_starttls_is_never_executed(
    modern_proxy: RunningProxy,
    dovecot_modern: DovecotInstance,
    fresh_mail_user: NewUser,
    tls_files: TlsFiles,
) -> None:
    user = fresh_mail_user(dovecot_modern)
    raw = modern_proxy.raw()
    raw.read_line()
    injected = f"x LOGIN {user.name} {user.password}\r\ny CREATE Injected\r\n".encode()
    raw.send(b"a STARTTLS\r\n" + injected)
    assert raw.read_line() == b"a OK Begin TLS negotiation now\r\n"
    tls = tls_files.client_context().wrap_socket(raw.sock, server_hostname="localhost")
    tls.sendall(b"b CAPABILITY\r\n")
    answer = b""
    while b"b OK" not in answer:
        chunk = tls.recv(65536)
        assert chunk
        answer += chunk
    assert b"x OK" not in answer and b"y OK" not in answer
    tls.close()
    direct = dovecot_modern.imap(user.name)
    assert b"Injected" not in b" ".join(x for x in direct.list()[1] if isinstance(x, bytes))
    direct.logout()


@pytest.mark.parametrize("security", [UpstreamSecurity.TLS, UpstreamSecurity.STARTTLS])
def test_tls_to_the_upstream(
    security: UpstreamSecurity, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    with running_proxy(proxy_config(dovecot_modern, security=security)) as proxy:
        client = login(proxy, user)
        assert client.select("INBOX")[0] == "OK"
        client.logout()
    log = dovecot_modern.log_text()
    assert "TLS" in log


def test_upstream_certificate_is_verified_by_default(
    dovecot_modern: DovecotInstance, tmp_path: Path
) -> None:
    config = proxy_config(dovecot_modern, security=UpstreamSecurity.TLS)
    untrusted = config.model_copy(
        update={"upstream": config.upstream.model_copy(update={"ca_file": None})}
    )
    with running_proxy(untrusted) as proxy, proxy.raw() as raw:
        greeting = raw.read_all()
        assert greeting.startswith(b"* BYE [UNAVAILABLE]")
        assert b"certificate" in greeting.lower()


# --- failures ------------------------------------------------------------------------


def test_client_gone_mid_append_leaves_no_partial_message(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    raw = modern_proxy.raw()
    raw.read_line()
    raw.send(f"a LOGIN {user.name} {user.password}\r\n".encode())
    raw.read_until(b"a OK")
    raw.read_line()
    raw.send(b"b APPEND INBOX {100000}\r\n")
    assert raw.read_until(b"\r\n").startswith(b"+")
    raw.send(b"x" * 60000)
    time.sleep(0.2)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    time.sleep(0.5)
    assert dovecot_modern.mailbox_messages(user.name) == []


def test_upstream_unreachable_gets_bye_unavailable() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]  # bound, not listening: connection refused
        config = ProxyConfig.model_validate(
            {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{port}"}}
        )
        with running_proxy(config) as proxy, proxy.raw() as raw:
            assert raw.read_all().startswith(b"* BYE [UNAVAILABLE]")


def test_upstream_killed_ends_only_that_session(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    victim = fresh_mail_user(dovecot_modern)
    survivor = fresh_mail_user(dovecot_modern)
    dovecot_modern.append(victim.name, make_message("big", b"y" * BIG_SIZE))
    other = login(modern_proxy, survivor)
    other.select("INBOX")

    # An idle session whose upstream dies gets a BYE.
    with modern_proxy.raw() as raw:
        raw.read_line()
        raw.send(
            f"a LOGIN {victim.name} {victim.password}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode()
        )
        raw.read_until(b"+ idling")
        dovecot_modern.kill_user_processes(victim.name)
        assert b"* BYE [UNAVAILABLE]" in raw.read_all()

    # A session whose upstream dies mid-FETCH is ended; it never gets a forged message.
    # The client reads nothing for a while, so the proxy and Dovecot are held back by
    # flow control with most of the message still unsent when Dovecot dies.
    with modern_proxy.raw() as raw:
        raw.read_line()
        raw.send(f"a LOGIN {victim.name} {victim.password}\r\nb SELECT INBOX\r\n".encode())
        raw.read_until(b"b OK")
        raw.read_line()
        raw.send(b"c FETCH 1 BODY[]\r\n")
        raw.read_until(b"{")
        time.sleep(0.5)
        dovecot_modern.kill_user_processes(victim.name)
        rest = raw.read_all()
    assert len(rest) < BIG_SIZE
    assert b"c OK" not in rest

    # The other session through the same proxy carries on.
    assert other.noop()[0] == "OK"
    assert other.select("INBOX")[0] == "OK"
    other.logout()


def test_many_sessions_at_once(
    modern_proxy: RunningProxy, dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    users = [fresh_mail_user(dovecot_modern) for _ in range(8)]
    errors: list[BaseException] = []

    def work(user: MailUser) -> None:
        try:
            client = login(modern_proxy, user)
            for i in range(5):
                client.append("INBOX", None, None, make_message(f"m{i} {user.name}"))
            client.select("INBOX")
            assert client.search(None, "ALL")[1] == [b"1 2 3 4 5"]
            client.logout()
        except BaseException as error:  # collected for the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for user in users:
        assert len(dovecot_modern.mailbox_messages(user.name)) == 5
