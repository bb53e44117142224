"""outreach.toml: every mistake is one line naming the file and the line or field."""

from pathlib import Path

import pytest

from outreach.config import load_config
from outreach.errors import ConfigError

BASE = """
[database]
url = "sqlite:///outreach.db"

[sending]
timezone = "Europe/Helsinki"

[[mailboxes]]
name = "Sanna Lehto"
email = "aino@northwind.example"
smtp_host = "127.0.0.1"
smtp_security = "none"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "outreach.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


@pytest.mark.sqlite_only
def test_starter_config_loads(workspace_dir: Path) -> None:
    config = load_config(workspace_dir / "outreach.toml")
    assert config.mailboxes[0].email == "sanna.lehto@northwind.example"
    assert config.database_url == f"sqlite:///{(workspace_dir / 'outreach.db').resolve()}"
    assert config.settings.ab.min_active_subjects == 3


def test_sqlite_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE.replace("outreach.db", "data/x.db")))
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'x.db'}"


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in info.value.one_line()
    assert "outreach init" in info.value.one_line()


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, BASE + "\n[ab\n")
    assert error.line == BASE.count("\n") + 2
    assert error.one_line().startswith(f"{tmp_path / 'outreach.toml'}:{error.line}: TOML syntax")


def test_unknown_setting_names_line_and_field(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        BASE.replace(
            'timezone = "Europe/Helsinki"', 'timezone = "Europe/Helsinki"\ndaily_limt = 5'
        ),
    )
    assert error.field == "sending.daily_limt"
    assert error.line == 7
    assert "unknown setting" in error.message


def test_password_in_file_is_refused(tmp_path: Path) -> None:
    error = error_of(tmp_path, BASE + 'password = "hunter2"\n')
    assert "secrets never sit in the config file" in error.message
    assert error.field == "mailboxes[0].password"
    assert error.line == BASE.count("\n") + 1
    assert "hunter2" not in error.one_line()


def test_plaintext_smtp_only_to_loopback(tmp_path: Path) -> None:
    error = error_of(
        tmp_path, BASE.replace('smtp_host = "127.0.0.1"', 'smtp_host = "smtp.example.com"')
    )
    assert "only allowed for a loopback host" in error.message
    assert error.field == "mailboxes[0]"


def test_bad_timezone_window_and_days(tmp_path: Path) -> None:
    assert (
        "unknown time zone 'Mars/Base'"
        in error_of(tmp_path, BASE.replace("Europe/Helsinki", "Mars/Base")).message
    )
    bad_window = BASE.replace('timezone = "Europe/Helsinki"', 'window = "17:00-08:00"')
    assert error_of(tmp_path, bad_window).field == "sending.window"
    bad_days = BASE.replace('timezone = "Europe/Helsinki"', 'days = "mon-fry"')
    assert error_of(tmp_path, bad_days).field == "sending.days"


def test_second_mailbox_error_points_at_its_own_line(tmp_path: Path) -> None:
    text = BASE + '\n[[mailboxes]]\nname = "B"\nemail = "not-an-address"\n'
    error = error_of(tmp_path, text)
    assert error.field == "mailboxes[1].email"
    assert error.line == text.splitlines().index('email = "not-an-address"') + 1


def test_mailbox_lookup_by_sender(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.mailbox(None).name == "Sanna Lehto"
    assert config.mailbox("AINO@northwind.example").name == "Sanna Lehto"
    with pytest.raises(ConfigError) as info:
        config.mailbox("bob@northwind.example")
    assert info.value.field == "--sender"


def test_password_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write(tmp_path, BASE + 'password_env = "OUTREACH_TEST_PW"\n'))
    monkeypatch.setenv("OUTREACH_TEST_PW", "s3cret")
    assert config.mailboxes[0].password() == "s3cret"


def test_a_number_in_quotes_and_a_bad_cron_are_refused(tmp_path: Path) -> None:
    error = error_of(tmp_path, BASE.replace('timezone = "Europe/Helsinki"', 'daily_limit = "50"'))
    assert error.field == "sending.daily_limit"
    error = error_of(tmp_path, BASE + '\n[ab]\nreview = "0 7 * * xyz"\n')
    assert error.field == "ab.review" and "not a cron expression" in error.message


def test_sender_cannot_be_shadowed_by_workspace_variables(tmp_path: Path) -> None:
    error = error_of(tmp_path, BASE + '\n[variables]\nsender = "x"\n')
    assert error.field == "variables" and "reserved" in error.message


def test_a_password_in_the_database_url_is_refused(tmp_path: Path) -> None:
    url = "postgresql+psycopg://outreach:hunter22@db.internal/o"
    error = error_of(tmp_path, BASE.replace("sqlite:///outreach.db", url, 1))
    assert error.field == "database.url" and "PGPASSWORD" in error.message
    assert "hunter22" not in error.one_line()


def test_a_digest_address_is_checked_at_load(tmp_path: Path) -> None:
    error = error_of(tmp_path, BASE + '\n[ab]\ndigest_to = "marketing at example"\n')
    assert error.field == "ab.digest_to" and error.line == BASE.count("\n") + 3


def test_tracking_is_off_by_default(tmp_path: Path) -> None:
    tracking = load_config(write(tmp_path, BASE)).settings.tracking
    assert (tracking.opens, tracking.clicks, tracking.domain, tracking.on) == (
        False,
        False,
        None,
        False,
    )
    assert tracking.machine_seconds == 60


def test_tracking_on_needs_a_domain_and_the_web_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "outreach.toml"
    error = error_of(tmp_path, BASE + "\n[web]\nenabled = true\n\n[tracking]\nopens = true\n")
    assert error.one_line() == (
        f"{path}:{BASE.count(chr(10)) + 5}: tracking.domain: [tracking] opens on needs "
        "[tracking] domain: the host (or base URL) your https proxy serves the tracking links "
        'at, e.g. domain = "t.northwind.example"'
    )
    error = error_of(
        tmp_path, BASE + '\n[tracking]\nclicks = true\ndomain = "t.northwind.example"\n'
    )
    assert error.field == "web.enabled"
    assert error.message.startswith("[tracking] clicks on needs [web] enabled = true")


@pytest.mark.parametrize(
    ("domain", "base_url"),
    [
        ("t.northwind.example", "https://t.northwind.example"),
        ("T.Northwind.Example/", "https://t.northwind.example"),
        ("https://northwind.example/t/", "https://northwind.example/t"),
        ("https://t.northwind.example:8443/x/y", "https://t.northwind.example:8443/x/y"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:8080/t", "http://localhost:8080/t"),
    ],
)
def test_the_tracking_domain_is_a_host_name_or_an_https_base_url(
    tmp_path: Path, domain: str, base_url: str
) -> None:
    text = BASE + f'\n[web]\nenabled = true\n\n[tracking]\nopens = true\ndomain = "{domain}"\n'
    tracking = load_config(write(tmp_path, text)).settings.tracking
    assert tracking.domain == base_url


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("http://t.northwind.example", "must be https:// (http:// only for a loopback host"),
        ("ftp://t.northwind.example", "is not a host name or a base URL"),
        ("https://t.northwind.example/?x=1", "no ?query or #fragment"),
        ("https://t.north wind.example", "is not a host name"),
        ("https://-t.example", "is not a host name"),
        ("https://t.example:99999", "is not a host name or a base URL"),
    ],
)
def test_a_bad_tracking_domain_is_one_line_at_its_key(
    tmp_path: Path, domain: str, says: str
) -> None:
    text = BASE + f'\n[web]\nenabled = true\n\n[tracking]\nopens = true\ndomain = "{domain}"\n'
    error = error_of(tmp_path, text)
    assert error.field == "tracking.domain"
    assert error.line == text.count("\n")
    assert says in error.message


def test_the_unknown_after_setting_reads_its_old_name_too(tmp_path: Path) -> None:
    """`[daemon] unknown_after_seconds` was `lease_seconds` (easily confused with the
    scale-out `claim_lease_seconds`): a config written with the old name still loads."""
    from outreach.config import load_config
    from outreach.starter import init_workspace

    init_workspace(tmp_path)
    config = tmp_path / "outreach.toml"
    text = config.read_text()
    assert "unknown_after_seconds = 600" in text
    config.write_text(text.replace("unknown_after_seconds = 600", "lease_seconds = 120"))
    assert load_config(config).settings.daemon.unknown_after_seconds == 120
    config.write_text(text.replace("unknown_after_seconds = 600", "unknown_after_seconds = 90"))
    assert load_config(config).settings.daemon.unknown_after_seconds == 90
