"""A real Dovecot IMAP server for the test suite: a private instance in a temp dir, free ports.

``Dovecot`` writes the config of ``/work/shared/testing/README.md`` (Debian's
``dovecot-imapd``; any user name logs in with password ``secret`` and gets its own maildir),
starts it, and puts messages in place with stdlib ``imaplib`` exactly as a mail client would.
It listens on two ports: plain IMAP with STARTTLS (``port``) and implicit TLS (``tls_port``),
with a self-signed certificate for ``localhost``/``127.0.0.1`` (``cert_path``).

The ``dovecot_server`` fixture reaches the tests through ``pytest_plugins = ["dovecot"]`` in
``conftest.py`` or a test module; this module is not a conftest itself. It is session-scoped:
each test logs in as a user name of its own (``Dovecot.new_user()``), so tests do not see each
other's mail.
"""

from __future__ import annotations

import base64
import datetime
import imaplib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PASSWORD = "secret"
SENT_SPECIAL_USE = "Sent Mail"  # the folder the config gives the \Sent SPECIAL-USE flag
INSTALL_HINT = "dovecot not installed: apt-get install dovecot-imapd"

# The README's config, plus: STARTTLS and an implicit-TLS listener (certificate below), and a
# "Sent Mail" folder that carries \Sent when it exists. It is not auto-created, so a user who
# has no such folder shows the fallback by name ("Sent", "Sent Items"...) and the error when
# there is none; a test creates it to see the SPECIAL-USE path. A wrong password is answered at
# once: no 2 s failure delay, and no growing per-IP penalty (anvil) that would slow every later
# login from 127.0.0.1 by 2-15 s.
# With an introspection URL, XOAUTH2 and OAUTHBEARER logins are checked by the oauth2 passdb
# (RFC 7662 introspection, as in ../shared/testing/README.md), and the static password stays
# for PLAIN and LOGIN only: the fixture's own imaplib sessions that put mail in place.
_OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {tmp}/dovecot-oauth2.conf.ext
}}
"""
_OAUTH2_EXT = """\
introspection_url = {url}
introspection_mode = post
username_attribute = username
active_attribute = active
active_value = true
"""
_CONFIG = """\
base_dir = {tmp}/run
state_dir = {tmp}/state
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{tmp}/cert.pem
ssl_key = <{tmp}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login{mechanisms}
auth_failure_delay = 0
log_path = {tmp}/dovecot.log
mail_location = maildir:{tmp}/mail/%u
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
{oauth2_passdb}passdb {{
  driver = static
  args = password={password}{static_mechanisms}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={tmp}/mail/%u
}}
namespace inbox {{
  inbox = yes
  mailbox "{sent}" {{
    special_use = \\Sent
    auto = no
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
  chroot =
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def dovecot_binary() -> str | None:
    """The ``dovecot`` executable (root's PATH has /usr/sbin; a user's may not)."""
    found = shutil.which("dovecot")
    if found:
        return found
    return "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_self_signed_cert(directory: Path) -> None:
    """``cert.pem`` and ``key.pem`` for localhost and 127.0.0.1, the certificate its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Fixed and wide: OpenSSL checks the real clock, which freezegun does not move.
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _quote(folder: str) -> str:
    # imaplib sends arguments as they are; a folder name with a space must be quoted.
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _utf7(folder: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3) for non-ASCII folder names such as "Lähetetyt"."""
    out: list[str] = []
    pending = ""

    def flush() -> None:
        nonlocal pending
        if pending:
            b64 = base64.b64encode(pending.encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            pending = ""

    for char in folder:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending += char
    flush()
    return "".join(out)


class Dovecot:
    """A private Dovecot on 127.0.0.1: ``with Dovecot() as server: server.port ...``."""

    password = PASSWORD  # every user's
    sent_special_use = SENT_SPECIAL_USE

    def __init__(self, *, oauth2_introspection_url: str | None = None) -> None:
        """``oauth2_introspection_url``: also accept XOAUTH2/OAUTHBEARER bearer tokens that
        this RFC 7662 endpoint calls active (the password still works for PLAIN/LOGIN)."""
        self.oauth2_introspection_url = oauth2_introspection_url
        binary = dovecot_binary()
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.binary = binary
        self.tmp = Path(tempfile.mkdtemp(prefix="outreach-dovecot-"))
        self._port = _free_port()
        self._tls_port = _free_port()
        self.config_path = self.tmp / "dovecot.conf"
        self.log_path = self.tmp / "dovecot.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """Plain IMAP, with STARTTLS offered."""
        return self._port

    @property
    def tls_port(self) -> int:
        """Implicit TLS (imaps)."""
        return self._tls_port

    @property
    def cert_path(self) -> Path:
        """The server's self-signed certificate, to trust exactly it in a client."""
        return self.tmp / "cert.pem"

    def start(self) -> None:
        """Write the config, start Dovecot and wait until both ports accept connections."""
        # Dovecot's unprivileged processes must reach the mail and run dirs below tmp.
        os.chmod(self.tmp, 0o755)
        mail = self.tmp / "mail"
        mail.mkdir()
        shutil.chown(mail, "dovecot", "dovecot")
        _write_self_signed_cert(self.tmp)
        oauth = self.oauth2_introspection_url
        if oauth:
            (self.tmp / "dovecot-oauth2.conf.ext").write_text(
                _OAUTH2_EXT.format(url=oauth), encoding="utf-8"
            )
        self.config_path.write_text(
            _CONFIG.format(
                tmp=self.tmp,
                mechanisms=" xoauth2 oauthbearer" if oauth else "",
                oauth2_passdb=_OAUTH2_PASSDB.format(tmp=self.tmp) if oauth else "",
                static_mechanisms="\n  mechanisms = plain login" if oauth else "",
                password=PASSWORD,
                sent=SENT_SPECIAL_USE,
                port=self._port,
                tls_port=self._tls_port,
            ),
            encoding="utf-8",
        )
        # -F keeps the master in the foreground as our child: stop() can wait for it, and
        # nothing is left behind as a daemon. It still writes run/master.pid.
        self._process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        for port in (self._port, self._tls_port):
            while not self._accepts(port):
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RuntimeError(f"dovecot exited: {err.strip()} {self._log_tail()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dovecot did not listen within 10 s: {self._log_tail()}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the master (SIGTERM to run/master.pid) and wait; remove the temp dir."""
        if self._process is not None:
            if self._process.poll() is None:
                pid_file = self.tmp / "run" / "master.pid"
                pid = self._process.pid
                if pid_file.exists():
                    pid = int(pid_file.read_text().strip() or pid)
                os.kill(pid, signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def new_user(prefix: str = "rep") -> str:
        """A user name no other test uses: its own, empty maildir."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}@northwind.example"

    # Putting mail in place and looking at it, as a mail client would (stdlib imaplib).

    def connect(self, user: str) -> imaplib.IMAP4:
        """A logged-in imaplib connection; the caller logs out."""
        client = imaplib.IMAP4(self.host, self._port, timeout=10)
        client.login(user, PASSWORD)
        return client

    def create_folder(self, user: str, folder: str) -> None:
        """CREATE the folder (no error when it exists)."""
        client = self.connect(user)
        try:
            client.create(_quote(_utf7(folder)))
        finally:
            client.logout()

    def delete_folder(self, user: str, folder: str) -> None:
        """DELETE the folder and its messages."""
        client = self.connect(user)
        try:
            typ, data = client.delete(_quote(_utf7(folder)))
            assert typ == "OK", data
        finally:
            client.logout()

    def append(
        self, user: str, folder: str, raw_bytes: bytes, flags: Iterable[str] = ()
    ) -> int | None:
        """APPEND a message (creating the folder if missing); its UID when the server says."""
        client = self.connect(user)
        try:
            client.create(_quote(_utf7(folder)))  # NO [ALREADYEXISTS] when it is there
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            typ, data = client.append(_quote(_utf7(folder)), flag_list, None, raw_bytes)
            assert typ == "OK", data
            # UIDPLUS: "[APPENDUID <uidvalidity> <uid>] Append completed."
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            return int(match.group(1)) if match else None
        finally:
            client.logout()

    def _examine(self, user: str, folder: str, items: str) -> list[tuple[bytes, bytes | None]]:
        client = self.connect(user)
        try:
            typ, data = client.select(_quote(_utf7(folder)), readonly=True)
            assert typ == "OK", data
            typ, data = client.uid("FETCH", "1:*", items)
            assert typ == "OK", data
            out: list[tuple[bytes, bytes | None]] = []
            for item in data:
                if isinstance(item, tuple):
                    out.append((item[0], item[1]))
                elif item and item != b")":
                    out.append((item, None))
            return out
        finally:
            client.logout()

    def messages(self, user: str, folder: str) -> list[bytes]:
        """The raw messages in the folder, by UID, read without setting \\Seen."""
        return [body or b"" for _, body in self._examine(user, folder, "(BODY.PEEK[])")]

    def flags(self, user: str, folder: str) -> dict[int, set[str]]:
        """UID -> flags of every message in the folder (read-only)."""
        out: dict[int, set[str]] = {}
        for head, _ in self._examine(user, folder, "(UID FLAGS)"):
            uid = re.search(rb"UID (\d+)", head)
            flags = re.search(rb"FLAGS \(([^)]*)\)", head)
            assert uid and flags, head
            out[int(uid.group(1))] = set(flags.group(1).decode().split())
        return out

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    """One Dovecot for the session; use ``Dovecot.new_user()`` for a mailbox of your own."""
    if dovecot_binary() is None:
        pytest.skip(INSTALL_HINT)
    with Dovecot() as server:
        yield server
