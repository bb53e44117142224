"""Read and validate ``outreach.toml`` into typed settings. Secrets come from the environment."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from outreach import planner
from outreach.configfile import dotted, find_line, read_toml
from outreach.errors import ConfigError

CONFIG_ENV = "OUTREACH_CONFIG"
DEFAULT_CONFIG = "outreach.toml"


class _Strict(BaseModel):
    # strict: "50" is not a number and "true" is not a boolean; TOML has real ones.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_zone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone '{value}' (use an IANA name such as Europe/Helsinki)"
        ) from None
    return value


def _check_window(value: str | None) -> str | None:
    if value is not None:
        planner.parse_window(value)
    return value


def _check_days(value: str | None) -> str | None:
    if value is not None:
        planner.parse_days(value)
    return value


class SendingDefaults(_Strict):
    """``[sending]``: defaults every mailbox inherits, and the global sending rules."""

    timezone: str = "Europe/Helsinki"
    window: str = "08:00-17:00"
    days: str = "mon-fri"
    holidays: str | None = "FI"
    daily_limit: int = Field(default=50, ge=1)
    min_gap_seconds: int = Field(default=60, ge=0)
    max_gap_seconds: int = Field(default=240, ge=0)
    language: str = "en"
    company: str | None = None
    unsubscribe_mailto: str | None = None
    unsubscribe_url: str | None = None
    # The environment variable holding the secret that signs unsubscribe links.
    unsubscribe_secret_env: str = "OUTREACH_SECRET"
    quote_previous: bool = True  # a "Re:" follow-up quotes the earlier message below it
    max_attempts: int = Field(default=8, ge=1)  # 4xx / dropped connection retries, then failed
    retry_seconds: int = Field(default=300, ge=1)  # first retry delay, doubling, at most 6 h
    # Bounce protection: a mailbox pauses when the hard bounces among its last
    # bounce_window_sends sends go above this rate, once the window holds at least
    # bounce_pause_min_sends sends (a domain's reputation cannot be bought back).
    bounce_pause_rate: float = Field(default=0.03, gt=0, lt=1)
    bounce_pause_min_sends: int = Field(default=20, ge=1)
    bounce_window_sends: int = Field(default=100, ge=1)
    # At most this many messages a day from one mailbox to one recipient domain (one company's
    # gateway), the rest the next sending day; None: no cap.
    recipient_domain_daily_limit: int | None = Field(default=None, ge=1)

    _zone = field_validator("timezone")(_check_zone)
    _window = field_validator("window")(_check_window)
    _days = field_validator("days")(_check_days)

    @field_validator("holidays")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if value.upper() not in _holiday_countries():
            raise ValueError(f"'{value}' is not a country code the holidays package knows")
        return value.upper()

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if value not in ("en", "fi", "sv"):
            raise ValueError("language must be en, fi or sv")
        return value

    @field_validator("unsubscribe_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value and not value.startswith("https://"):
            raise ValueError("unsubscribe_url must be an https:// URL")
        return value or None

    @model_validator(mode="after")
    def _gaps(self) -> SendingDefaults:
        if self.max_gap_seconds < self.min_gap_seconds:
            raise ValueError("max_gap_seconds must be at least min_gap_seconds")
        return self

    @model_validator(mode="after")
    def _bounce_window(self) -> SendingDefaults:
        if self.bounce_window_sends < self.bounce_pause_min_sends:
            # A window smaller than the minimum would never pause anything.
            raise ValueError("bounce_window_sends must be at least bounce_pause_min_sends")
        return self


class Mailbox(_Strict):
    """``[[mailboxes]]``: one sender, the real person whose name the messages carry."""

    name: str
    email: str
    title: str | None = None
    company: str | None = None
    signature: str | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    password_env: str | None = None
    imap_host: str | None = None
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_security: Literal["starttls", "tls", "none"] = "tls"
    imap_username: str | None = None
    # APPEND each sent message to the Sent folder over IMAP, so the rep sees the thread in
    # their mail client. Many SMTP servers do not keep a copy; Gmail and Microsoft 365 do, so
    # leave it off there or every message shows twice.
    save_to_sent: bool = False
    daily_limit: int | None = Field(default=None, ge=1)
    # Warm-up: a new mailbox sends warmup_start on its first sending day and warmup_step more
    # on each sending day after it, up to daily_limit (outreach/reputation.py).
    warmup_start: int | None = Field(default=None, ge=1)
    warmup_step: int | None = Field(default=None, ge=1)
    timezone: str | None = None
    window: str | None = None
    days: str | None = None
    # OAuth 2.0 (SASL XOAUTH2 for SMTP and IMAP): Microsoft 365 and Google Workspace refuse
    # passwords. The grant lives encrypted in the database (``[secrets] key_env``).
    auth: Literal["password", "oauth2"] = "password"
    oauth_provider: Literal["microsoft", "google", "generic"] | None = None
    oauth_flow: (
        Literal["device", "client_credentials", "authorization_code", "service_account"] | None
    ) = None
    oauth_client_id: str | None = None
    # The client secret (client_credentials, authorization_code) or, for service_account,
    # the service account's JSON key: the name of the environment variable holding it.
    oauth_client_secret_env: str | None = None
    oauth_tenant: str | None = None  # Microsoft: the directory (tenant) id or domain
    oauth_scopes: list[str] | None = None
    oauth_token_url: str | None = None
    oauth_device_url: str | None = None
    oauth_authorize_url: str | None = None
    # Bound by the workspace: where this mailbox's OAuth tokens come from (its database).
    _token_source: Any = PrivateAttr(default=None)
    # The DKIM selector the mail of this mailbox is signed with (the s= of its DKIM-Signature);
    # `outreach doctor` looks for the key at SELECTOR._domainkey.DOMAIN. Without it, doctor
    # tries the provider's usual selectors (selector1/selector2 for Microsoft 365, google).
    dkim_selector: str | None = None

    _zone = field_validator("timezone")(_check_zone)
    _window = field_validator("window")(_check_window)
    _days = field_validator("days")(_check_days)

    @model_validator(mode="before")
    @classmethod
    def _provider_hosts(cls, data: Any) -> Any:
        """A provider's SMTP and IMAP servers, unless the entry names its own."""
        if isinstance(data, dict) and data.get("auth") == "oauth2":
            from outreach.oauth_providers import PROVIDER_HOSTS

            for group in PROVIDER_HOSTS.get(str(data.get("oauth_provider")), ()):
                if not set(group) & set(data):  # smtp_* or imap_* named: the entry's own
                    data = {**group, **data}
        return data

    @field_validator("oauth_token_url", "oauth_device_url", "oauth_authorize_url")
    @classmethod
    def _oauth_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https:// URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            # A client secret and the user's grant travel here: never in clear over a network.
            raise ValueError(
                f"must be https:// (http:// only for a loopback host, not {parts.hostname})"
            )
        return value

    @model_validator(mode="after")
    def _oauth(self) -> Mailbox:
        from outreach.oauth_providers import check_mailbox

        check_mailbox(self)
        return self

    @model_validator(mode="after")
    def _warmup_pair(self) -> Mailbox:
        if (self.warmup_start is None) != (self.warmup_step is None):
            raise ValueError(
                "warmup_start and warmup_step go together (e.g. warmup_start = 5, "
                "warmup_step = 5: 5 on the first sending day, 10 on the next, ...)"
            )
        return self

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        from outreach.prospect_csv import normalize_email

        return normalize_email(value)

    @field_validator("name", "title", "company")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"[\r\n\x00-\x1f]", value):
            raise ValueError("must be a single line (it goes into mail headers)")
        return value

    @field_validator("dkim_selector")
    @classmethod
    def _selector(cls, value: str | None) -> str | None:
        # A selector is one or more DNS labels (RFC 6376 3.1), e.g. "selector1" or "2024.mail".
        if value is not None and not re.fullmatch(
            r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*", value
        ):
            raise ValueError(
                f"'{value}' is not a DKIM selector (letters, digits, hyphens and dots, as in "
                "the s= tag of a DKIM-Signature header)"
            )
        return value

    @model_validator(mode="after")
    def _sent_needs_imap(self) -> Mailbox:
        if self.save_to_sent and not self.imap_host:
            raise ValueError("save_to_sent needs imap_host (the Sent folder is reached over IMAP)")
        return self

    @model_validator(mode="after")
    def _plaintext_only_to_loopback(self) -> Mailbox:
        for proto, host, security in (
            ("smtp", self.smtp_host, self.smtp_security),
            ("imap", self.imap_host, self.imap_security),
        ):
            if host and security == "none" and not _is_loopback(host):
                raise ValueError(
                    f'{proto}_security = "none" is only allowed for a loopback host, '
                    f"not {host} (use starttls or tls)"
                )
        return self

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.split() else self.name

    def password(self) -> str | None:
        """The secret, read from the environment variable the config names."""
        return os.environ.get(self.password_env) if self.password_env else None

    @property
    def smtp_login(self) -> str | None:
        """The SMTP user name: ``smtp_username``, for OAuth the mailbox's address by default."""
        return self.smtp_username or (self.email if self.auth == "oauth2" else None)

    def bind_token_source(self, source: Any) -> None:
        """Tell this mailbox where its OAuth tokens come from (the workspace does it: the
        grant is kept in the workspace's database)."""
        self._token_source = source

    @property
    def token_source(self) -> Any:
        """The bound :class:`outreach.grants.TokenSource` of an OAuth mailbox."""
        if self._token_source is None:
            raise ConfigError(
                f"mailbox {self.email} uses OAuth but no workspace holds its grant",
                field=f"mailboxes {self.email}: auth",
            )
        return self._token_source


class Daemon(_Strict):
    """``[daemon]``: the long-running process's pace."""

    dispatch_seconds: int = Field(default=30, ge=1)  # how often due work is looked for
    # A message handed to SMTP with no answer this long after was in a process that died: it
    # becomes `unknown`, never resent by itself. (Called `lease_seconds` before: still read,
    # so as not to be confused with claim_lease_seconds, the scale-out lease.)
    unknown_after_seconds: int = Field(
        default=600, ge=30, validation_alias=AliasChoices("unknown_after_seconds", "lease_seconds")
    )
    # Scale-out: what a daemon holds (claimed messages, a mailbox, the poll) lapses this long
    # after its last heartbeat; a heartbeat is written every third of it.
    claim_lease_seconds: int = Field(default=60, ge=2)


class Replies(_Strict):
    """``[replies]``: watching the mailboxes for replies, bounces and auto-replies."""

    poll_seconds: int = Field(default=120, ge=10)  # how often `outreach run` polls
    # Also wait in IMAP IDLE where the server offers it, and poll the moment mail arrives.
    idle: bool = True
    folders: list[str] = Field(default_factory=lambda: ["INBOX"])
    # An out-of-office without a readable return date pushes the next step this far.
    auto_reply_days: int = Field(default=7, ge=1)
    # When one person at a company replies, pause colleagues from the same domain until a
    # rep decides (`outreach resume`).
    company_stop: bool = True


class Web(_Strict):
    """``[web]``: the HTTP endpoints `outreach run` serves (behind your reverse proxy)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # The environment variable with the bearer token a booking tool sends to POST /goal.
    goal_token_env: str = "OUTREACH_GOAL_TOKEN"


class Crm(_Strict):
    """``[crm]``: hand a prospect who replied or reached a goal to the CRM, by a webhook POST."""

    # Where each hand-off is POSTed; without it nothing is queued.
    webhook_url: str | None = None
    # "json": outreach's own document; "pipedrive": person/deal/note in Pipedrive's field
    # shape, for a middleware (Zapier, Make, your endpoint) that calls Pipedrive.
    format: Literal["json", "pipedrive"] = "json"
    # The environment variable with the secret that signs each body (X-Outreach-Signature).
    secret_env: str | None = None
    timeout_seconds: int = Field(default=10, ge=1, le=300)
    max_attempts: int = Field(default=8, ge=1)  # 5xx, 408, 429, no answer: retried, then failed
    deliver_seconds: int = Field(default=30, ge=1)  # how often `outreach run` delivers

    @field_validator("webhook_url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("webhook_url must be an https:// URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            # The body names a person and carries their reply: never in clear over a network.
            raise ValueError(
                f"webhook_url must be https:// (http:// only for a loopback host, "
                f"not {parts.hostname})"
            )
        return value


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*"
)


class Tracking(_Strict):
    """``[tracking]``: opt-in open and click tracking, off by default.

    A pixel and rewritten links cost deliverability, and privacy proxies and link scanners
    fetch them without a person (:mod:`outreach.mail.scanners`); replies stay the A/B metric.
    """

    opens: bool = False  # a 1x1 image in the HTML part, at a signed URL
    clicks: bool = False  # the copy's links through a signed redirect
    # Where `outreach run`'s web endpoints are reached from the internet, behind the team's
    # proxy: a host name ("t.northwind.example", https implied) or a base URL
    # ("https://northwind.example/t"); stored as the base URL, without a trailing slash.
    domain: str | None = None
    # An open or click this soon after the message was sent is a machine's (a gateway or link
    # scanner fetching at delivery): recorded, never counted.
    machine_seconds: int = Field(default=60, ge=0, le=86_400)

    @field_validator("domain")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        url = value if "://" in value else "https://" + value
        example = 'e.g. domain = "t.northwind.example" or "https://northwind.example/t"'
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            raise ValueError(f"'{value}' is not a host name or a base URL ({example})") from None
        if parts.scheme not in ("https", "http") or not host or parts.username is not None:
            raise ValueError(f"'{value}' is not a host name or a base URL ({example})")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise ValueError("domain is a base URL: no ?query or #fragment")
        if not (_HOST_NAME.fullmatch(host) or _is_ip(host)):
            raise ValueError(f"'{host}' is not a host name ({example})")
        if parts.scheme == "http" and not _is_loopback(host):
            # The links name the message they came in; a network sees every fetch.
            raise ValueError(
                f"domain must be https:// (http:// only for a loopback host, not {host})"
            )
        return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"

    @property
    def on(self) -> bool:
        """Whether any tracking is on (each message then needs the signing secret)."""
        return self.opens or self.clicks

    @property
    def path_prefix(self) -> str:
        """The path the base URL adds before ``/o/`` and ``/c/`` ("" or "/t")."""
        return urlsplit(self.domain).path if self.domain else ""


class Tasks(_Strict):
    """``[tasks]``: LinkedIn and manual steps, done by the rep."""

    # A task not marked done within this many days is skipped, so the sequence goes on.
    skip_after_days: int = Field(default=7, ge=1)


class Database(_Strict):
    url: str = "sqlite:///outreach.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError(
                "use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB (the only stores "
                "outreach supports)"
            )
        if re.match(r"postgresql\+psycopg://[^/@]*:[^/@]*@", value):
            raise ValueError(
                "a password in the URL would sit in the file; leave it out and give it to "
                "PostgreSQL through PGPASSWORD or ~/.pgpass (secrets never sit in the file)"
            )
        return value


class Paths(_Strict):
    sequences: str = "sequences"
    templates: str = "templates"


class ABSettings(_Strict):
    review: str = "0 7 * * mon,thu"
    min_sends_per_variant: int = Field(default=100, ge=1)
    retire_below_probability: float = Field(default=0.05, gt=0, lt=1)
    # A variant is retired only when it is probably more than this share worse than the best
    # (0: when it is probably not the best), so that equal variants are not retired by chance.
    retire_margin: float = Field(default=0.2, ge=0, lt=1)
    # The review takes a variant to be like the others until its data say otherwise: a prior
    # worth this many sends at the step's pooled reply rate (0: uniform).
    prior_sends: float = Field(default=50, ge=0)
    min_active_subjects: int = Field(default=3, ge=1)
    min_active_bodies: int = Field(default=2, ge=1)
    # What counts as a win: "positive_or_neutral" replies (not refusals, not "remove me"), or
    # "any_reply" (every human reply).
    metric: Literal["positive_or_neutral", "any_reply"] = "positive_or_neutral"
    # Replies come within this many days of their message (later ones still count as wins): a
    # send younger than this weighs the share of replies that come by its age, learnt from
    # the workspace's own replies to messages older than this.
    reply_window_days: int = Field(default=14, ge=1)
    # Accepted so that older files load; sends are no longer hidden (reply_window_days).
    mature_after_days: int | None = Field(default=None, ge=0)
    # "index": the variant with the highest index (reply rate plus what a send would teach,
    # worth what the sends still to come can repay: outreach.ab.index); "thompson": draws from
    # the posteriors; "balanced": equal counts among the active variants.
    assignment: Literal["balanced", "thompson", "index"] = "index"
    # The index's horizon: a variant's lesson is worth this many days of the step's sends at
    # its pace of the last reply_window_days (about six months: a subject line's life).
    horizon_days: int = Field(default=182, ge=1)
    # After each review the marketer's digest is written here (relative to this file; "" for
    # none), and mailed to digest_to (from the first mailbox) when that is set.
    digest_file: str = "ab-digest.md"
    digest_to: str | None = None

    @field_validator("digest_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from outreach.prospect_csv import normalize_email

        try:
            return normalize_email(value)
        except ValueError as exc:
            raise ValueError(f"not an email address: {exc}") from None

    @field_validator("review")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f'not a cron expression ({exc}); e.g. "0 7 * * mon,thu"') from None
        return value


class Secrets(_Strict):
    """``[secrets]``: how stored secrets (OAuth grants) are encrypted in the database."""

    # The environment variable holding the Fernet key (``outreach secrets key`` makes one);
    # several keys separated by commas: the first encrypts, all decrypt (key rotation).
    key_env: str = "OUTREACH_SECRETS_KEY"


class Settings(_Strict):
    database: Database = Database()
    secrets: Secrets = Secrets()
    paths: Paths = Paths()
    sending: SendingDefaults = SendingDefaults()
    mailboxes: list[Mailbox] = Field(default_factory=list)
    ab: ABSettings = ABSettings()
    daemon: Daemon = Daemon()
    replies: Replies = Replies()
    web: Web = Web()
    crm: Crm = Crm()
    tracking: Tracking = Tracking()
    tasks: Tasks = Tasks()
    sample_prospect: dict[str, str] = Field(default_factory=dict)
    # Workspace-wide template variables (links to the site, a case, a webinar...); a CSV column
    # of the same name overrides them per prospect.
    variables: dict[str, str] = Field(default_factory=dict)

    @field_validator("variables", "sample_prospect")
    @classmethod
    def _not_sender(cls, value: dict[str, str]) -> dict[str, str]:
        if "sender" in value:
            raise ValueError("'sender' is reserved: templates get it from the mailbox")
        return value

    @field_validator("variables")
    @classmethod
    def _not_a_prospect_field(cls, value: dict[str, str]) -> dict[str, str]:
        from outreach.prospect_csv import STANDARD_FIELDS

        clash = sorted(set(value) & set(STANDARD_FIELDS))
        if clash:
            raise ValueError(f"'{clash[0]}' is a prospect field, not a workspace variable")
        return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cross_checks(settings: Settings) -> tuple[tuple[str, ...], str] | None:
    """A setting that needs another one: where (the key at fault) and what is missing."""
    tracking = settings.tracking
    if tracking.on:
        kinds = " and ".join(k for k in ("opens", "clicks") if getattr(tracking, k))
        turned_on = f"[tracking] {kinds} on"
        if tracking.domain is None:
            return (
                ("tracking", "domain"),
                f"{turned_on} needs [tracking] domain: the host (or base URL) your https proxy "
                'serves the tracking links at, e.g. domain = "t.northwind.example"',
            )
        if not settings.web.enabled:
            return (
                ("web", "enabled"),
                f"{turned_on} needs [web] enabled = true: `outreach run` serves the pixel and "
                f"the tracked links behind your proxy at {tracking.domain}",
            )
    return None


@dataclass(frozen=True)
class Config:
    """Settings plus where they came from; relative paths resolve against the file's folder."""

    path: Path
    settings: Settings

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def database_url(self) -> str:
        url = self.settings.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str((self.root / url[len(prefix) :]).resolve())
        return url

    @property
    def sequences_dir(self) -> Path:
        return self.root / self.settings.paths.sequences

    @property
    def templates_dir(self) -> Path:
        return self.root / self.settings.paths.templates

    @property
    def mailboxes(self) -> list[Mailbox]:
        return self.settings.mailboxes

    def mailbox(self, email: str | None, field: str = "--sender") -> Mailbox:
        """The mailbox with ``email``, or the only one when ``email`` is None; errors name
        ``field``, the option or argument that gave it."""
        boxes = self.settings.mailboxes
        if email is None:
            if len(boxes) == 1:
                return boxes[0]
            if not boxes:
                raise ConfigError("no [[mailboxes]] configured", file=self.path)
            raise ConfigError(
                "several mailboxes are configured; choose one with --sender",
                field=field,
                hint="known: " + ", ".join(b.email for b in boxes),
            )
        wanted = email.strip().lower()
        for box in boxes:
            if box.email == wanted:
                return box
        raise ConfigError(
            f"no mailbox with email {email} in {self.path.name}",
            field=field,
            hint="known: " + ", ".join(b.email for b in boxes) if boxes else None,
        )

    def calendar(
        self, mailbox: Mailbox, prospect_timezone: str | None = None
    ) -> planner.SendingCalendar:
        """The sending calendar of a mailbox, in the prospect's zone when it has one."""
        defaults = self.settings.sending
        return _calendar(
            prospect_timezone or mailbox.timezone or defaults.timezone,
            mailbox.window or defaults.window,
            mailbox.days or defaults.days,
            defaults.holidays,
        )

    def daily_limit(self, mailbox: Mailbox) -> int:
        return mailbox.daily_limit or self.settings.sending.daily_limit


@lru_cache(maxsize=1)
def _holiday_countries() -> frozenset[str]:
    """The country codes (alpha-2, alpha-3 and aliases such as UK) the holidays package knows,
    from its registry: ``list_supported_countries()`` imports all 250 country modules, a
    tenth of a second at every command's start."""
    from holidays import registry

    return frozenset(
        code
        for names in registry.COUNTRIES.values()
        for code in names[1:]
        if code.isupper() and len(code) <= 3
    )


@lru_cache(maxsize=1024)
def _calendar(zone: str, window: str, days: str, holidays: str | None) -> planner.SendingCalendar:
    return planner.SendingCalendar(
        timezone=ZoneInfo(zone),
        window=planner.parse_window(window),
        days=planner.parse_days(days),
        holidays=holidays,
    )


def find_config_path(explicit: str | Path | None) -> Path:
    """``--config``, else ``$OUTREACH_CONFIG``, else ``./outreach.toml``."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path(DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    """Read and validate the configuration; any problem is a ConfigError with file and line."""
    text, raw = read_toml(path)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigError(
            message, file=path, line=find_line(text, loc), field=dotted(loc)
        ) from None
    missing = _cross_checks(settings)
    if missing is not None:
        loc, message = missing
        raise ConfigError(message, file=path, line=find_line(text, loc), field=dotted(loc))
    return Config(path=path.resolve(), settings=settings)
