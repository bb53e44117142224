"""OAuth mailboxes without mail servers: the config and its presets, the key that encrypts the
grants, and the device flow's polling against the loopback authorization server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from outreach.config import load_config
from outreach.connect import connect
from outreach.errors import ConfigError
from outreach.oauth import ConnectFailed, OAuthClient, TokenEndpointDown, Tokens
from outreach.oauth_providers import provider_for
from outreach.secrets import Vault, new_key
from outreach.workspace import Workspace
from tests.conftest import Cli
from tests.oauth_server import AuthServer, Client

BASE = """
[[mailboxes]]
name = "Sanna Lehto"
email = "sanna@northwind.example"
"""


def config_of(tmp_path: Path, mailbox: str, extra: str = "") -> Path:
    path = tmp_path / "outreach.toml"
    path.write_text(BASE + mailbox + extra, encoding="utf-8")
    return path


def error_of(tmp_path: Path, mailbox: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_of(tmp_path, mailbox))
    return info.value.one_line()


def test_microsoft_device_flow_needs_only_the_client_id(tmp_path: Path) -> None:
    config = load_config(
        config_of(
            tmp_path, 'auth = "oauth2"\noauth_provider = "microsoft"\noauth_client_id = "c1"\n'
        )
    )
    [box] = config.mailboxes
    # The provider's servers, and its endpoints and scopes for delegated access.
    assert (box.smtp_host, box.smtp_port, box.smtp_security) == (
        "smtp.office365.com",
        587,
        "starttls",
    )
    assert (box.imap_host, box.imap_port, box.imap_security) == (
        "outlook.office365.com",
        993,
        "tls",
    )
    assert box.smtp_login == "sanna@northwind.example"  # user names default to the address
    provider = provider_for(box)
    assert provider.flow == "device" and provider.delegated
    assert provider.device_url == (
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode"
    )
    assert "https://outlook.office.com/SMTP.Send" in provider.scopes
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in provider.scopes
    assert "offline_access" in provider.scopes


def test_microsoft_app_only_and_google_presets(tmp_path: Path) -> None:
    ms = load_config(
        config_of(
            tmp_path,
            'auth = "oauth2"\noauth_provider = "microsoft"\noauth_flow = "client_credentials"\n'
            'oauth_client_id = "c1"\noauth_client_secret_env = "MS_SECRET"\n'
            'oauth_tenant = "northwind.example"\n',
        )
    ).mailboxes[0]
    app = provider_for(ms)
    assert app.scopes == ("https://outlook.office365.com/.default",) and not app.delegated
    assert app.token_url == "https://login.microsoftonline.com/northwind.example/oauth2/v2.0/token"
    google = load_config(
        config_of(
            tmp_path,
            'auth = "oauth2"\noauth_provider = "google"\noauth_client_id = "g1"\n'
            'oauth_client_secret_env = "G_SECRET"\nimap_host = "127.0.0.1"\n'
            'imap_security = "none"\n',
        )
    ).mailboxes[0]
    assert google.smtp_host == "smtp.gmail.com"  # only the IMAP side was named
    assert google.imap_host == "127.0.0.1"
    provider = provider_for(google)
    assert provider.flow == "authorization_code"
    assert provider.scopes == ("https://mail.google.com/",)
    assert provider.authorize_params == {"access_type": "offline", "prompt": "consent"}


@pytest.mark.parametrize(
    ("mailbox", "message"),
    [
        (
            'auth = "oauth2"\noauth_provider = "google"\noauth_flow = "device"\n'
            'oauth_client_id = "g"\n',
            "Google's device flow does not allow the https://mail.google.com/ scope",
        ),
        ('auth = "oauth2"\noauth_client_id = "c"\n', "needs oauth_provider"),
        (
            'auth = "oauth2"\noauth_provider = "generic"\noauth_flow = "device"\n'
            'oauth_client_id = "c"\noauth_device_url = "https://id.example/device"\n',
            'oauth_token_url is needed with oauth_provider = "generic"',
        ),
        (
            'auth = "oauth2"\noauth_provider = "generic"\noauth_flow = "device"\n'
            'oauth_client_id = "c"\noauth_token_url = "http://id.example/token"\n',
            "http:// only for a loopback host, not id.example",
        ),
        (
            'auth = "oauth2"\noauth_provider = "microsoft"\noauth_client_id = "c"\n'
            'password_env = "X"\n',
            "password_env is for auth",
        ),
        ('oauth_client_id = "c"\n', 'oauth_client_id needs auth = "oauth2"'),
        (
            'auth = "oauth2"\noauth_provider = "microsoft"\noauth_flow = "client_credentials"\n'
            'oauth_client_id = "c"\noauth_client_secret_env = "S"\n',
            "oauth_tenant is needed for app-only access",
        ),
        (
            'auth = "oauth2"\noauth_provider = "google"\noauth_flow = "service_account"\n',
            "oauth_client_secret_env is needed: the environment variable with the service "
            "account's JSON key",
        ),
        ('auth = "oauth2"\noauth_provider = "microsoft"\n', "oauth_client_id is needed"),
    ],
)
def test_an_oauth_setup_that_cannot_work_is_one_line_at_its_mailbox(
    tmp_path: Path, mailbox: str, message: str
) -> None:
    line = error_of(tmp_path, mailbox)
    assert message in line
    # The [[mailboxes]] entry's line, or the line of the very setting when it is one field.
    assert re.match(rf"{re.escape(str(tmp_path / 'outreach.toml'))}:\d+: mailboxes\[0\]", line)


def test_a_token_in_the_file_is_refused(tmp_path: Path) -> None:
    line = error_of(tmp_path, 'auth = "oauth2"\ntoken = "at-123"\n')
    assert "secrets never sit in the config file" in line


def test_the_vault_needs_its_key_and_rotates_to_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OUTREACH_SECRETS_KEY", raising=False)
    with pytest.raises(ConfigError) as missing:
        Vault.from_env("OUTREACH_SECRETS_KEY")
    assert missing.value.field == "[secrets] key_env"
    assert "outreach secrets key" in missing.value.one_line()
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="does not hold a Fernet key"):
        Vault.from_env("OUTREACH_SECRETS_KEY")

    old, new = new_key(), new_key()
    stored = Vault([old]).encrypt("rt-secret")
    assert "rt-secret" not in stored
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        Vault([new]).decrypt(stored)
    both = Vault([new, old])  # the new key first: it encrypts, both decrypt
    rotated = both.rotate(stored)
    assert Vault([new]).decrypt(rotated) == "rt-secret"
    assert Fernet(new.encode()).decrypt(rotated.encode()) == b"rt-secret"


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


def _device_workspace(tmp_path: Path, auth: AuthServer, client_id: str) -> Workspace:
    path = config_of(
        tmp_path,
        'auth = "oauth2"\noauth_provider = "generic"\noauth_flow = "device"\n'
        f'oauth_client_id = "{client_id}"\noauth_token_url = "{auth.token_url}"\n'
        f'oauth_device_url = "{auth.device_url}"\nsmtp_host = "127.0.0.1"\n'
        'smtp_security = "none"\n',
        f'\n[database]\nurl = "sqlite:///{tmp_path / "o.db"}"\n',
    )
    return Workspace.load(path)


def test_device_flow_polls_at_the_interval_and_slows_down_when_told(
    tmp_path: Path, auth: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", new_key())
    auth.register(Client("device-app"))
    auth.device_user, auth.device_approve_after, auth.device_slow_down = "sanna@x.example", 3, True
    ws = _device_workspace(tmp_path, auth, "device-app")
    waits: list[float] = []
    said: list[str] = []
    try:
        line = connect(ws.config.mailboxes[0].token_source, say=said.append, sleep=waits.append)
        info = ws.config.mailboxes[0].token_source.info()
    finally:
        ws.close()
    # interval 1 s; slow_down at the first poll: every later poll waits 5 s more (RFC 8628).
    assert waits == [1, 6, 6]
    assert line == "sanna@northwind.example connected (generic, device)"
    assert any(auth.base + "/device" in s for s in said)
    assert any("enter the code " in s for s in said)
    assert info is not None and info.flow == "device" and info.refreshes == 1


def test_device_flow_waits_out_an_endpoint_outage(
    tmp_path: Path, auth: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", new_key())
    auth.register(Client("device-app-2"))
    auth.device_user, auth.device_approve_after, auth.device_slow_down = "s@x.example", 1, False
    ws = _device_workspace(tmp_path, auth, "device-app-2")
    said: list[str] = []

    def sleep(seconds: float) -> None:
        auth.down = len(said) < 5 and not auth.down  # down for the first poll only
        said.append(f"slept {seconds}")

    try:
        line = connect(ws.config.mailboxes[0].token_source, say=said.append, sleep=sleep)
    finally:
        auth.down = False
        ws.close()
    assert "connected" in line
    assert any("HTTP 503; asking again" in s for s in said)


def test_stored_grant_tokens_are_never_in_repr() -> None:
    tokens = Tokens("at-visible?", datetime(2027, 1, 1, tzinfo=UTC), "rt-visible?", "mail")
    assert "visible" not in repr(tokens)


def test_secrets_key_prints_a_usable_key(run: Cli) -> None:
    result = run("secrets", "key")
    assert result.exit_code == 0
    Fernet(result.stdout.strip().encode())  # a valid Fernet key


def test_connect_of_a_password_mailbox_is_one_line(run: Cli) -> None:
    result = run("mailboxes", "connect", "sanna.lehto@northwind.example")
    assert result.exit_code == 1
    assert "logs in with a password: nothing to connect" in result.stderr
    assert "Traceback" not in result.output


def test_check_of_a_password_mailbox_on_the_local_sink(run: Cli) -> None:
    """The starter's mailbox sends to `outreach sink` on 127.0.0.1:8025, not running here."""
    result = run("mailboxes", "check", "--json")
    assert result.exit_code == 1
    steps = json.loads(result.stdout)["steps"]
    assert [s["step"] for s in steps] == ["smtp connect", "imap"]
    assert steps[0]["ok"] is False and "127.0.0.1:8025" in steps[0]["detail"]
    assert steps[1]["ok"] is None  # no imap_host: skipped, not failed


def test_a_slow_token_endpoint_is_a_transient_failure(
    tmp_path: Path, auth: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", new_key())
    auth.register(Client("slow-app"))
    ws = _device_workspace(tmp_path, auth, "slow-app")
    auth.delay = 1.0
    try:
        client = OAuthClient(ws.config.mailboxes[0], timeout=0.3)
        with pytest.raises(
            TokenEndpointDown, match=r"127\.0\.0\.1: refresh: no answer within 0\.3 s"
        ):
            client.refresh("rt-whatever", datetime.now(UTC))
    finally:
        auth.delay = 0.0
        ws.close()


def test_secrets_rotate_moves_the_grants_to_a_new_key(
    tmp_path: Path, auth: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = new_key(), new_key()
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", old)
    auth.register(Client("rotating-app"))
    auth.device_user, auth.device_approve_after, auth.device_slow_down = "s@x.example", 1, False
    ws = _device_workspace(tmp_path, auth, "rotating-app")
    try:
        connect(ws.config.mailboxes[0].token_source, say=lambda line: None, sleep=lambda s: None)
        token = ws.config.mailboxes[0].token_source.access_token()
    finally:
        ws.close()
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", f"{new},{old}")
    result = Cli(ws.config.path)("secrets", "rotate")
    assert result.exit_code == 0, result.output
    assert "1 grant(s) re-encrypted with the first key of OUTREACH_SECRETS_KEY" in result.output
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", new)  # the old key is gone now
    again = Workspace.load(ws.config.path)
    try:
        assert again.config.mailboxes[0].token_source.access_token() == token
    finally:
        again.close()


def test_a_declined_device_code_is_one_line_and_stores_nothing(
    tmp_path: Path, auth: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SECRETS_KEY", new_key())
    auth.register(Client("declined-app"))
    auth.device_user, auth.device_decline = "s@x.example", True
    ws = _device_workspace(tmp_path, auth, "declined-app")
    try:
        source = ws.config.mailboxes[0].token_source
        with pytest.raises(ConnectFailed) as info:
            connect(source, say=lambda line: None, sleep=lambda s: None)
        assert source.info() is None
    finally:
        auth.device_decline = False
        ws.close()
    assert info.value.one_line() == (
        "127.0.0.1 answered authorization_declined: declined "
        "(run `outreach mailboxes connect` again)"
    )
