"""Reading ``outreach.toml`` safely, before its settings are validated: UTF-8, bounded
nesting, and no secret in it (the file is copied, committed and shared; secrets live in the
environment). Every refusal is one :class:`ConfigError` naming the line and the field, and
never repeats the secret."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from outreach.errors import ConfigError

# A key whose name ends in one of these words (case and separators aside: `api_token`,
# `smtp_pass`, `imapPassword`, `[variables] stripe_secret`, `hubspot_api_key`) holds a secret,
# unless its last word is `env` or `url`: those name the environment variable that holds it,
# or an endpoint (whose URL is checked on its own). "secretary" and "bypass" are no secrets.
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credential")
SECRET_PARTS = {"pass", "pw", "pwd"}
SECRET_PAIRS = ("apikey", "privatekey", "accesskey", "signingkey")
SECRET_PLURALS = tuple(word + "s" for word in SECRET_WORDS)
# Credentials in a URL: `scheme://user:password@host`, or any user at all in an http(s) URL
# (`https://TOKEN@host`). A database URL may name its user: PostgreSQL reads the password
# from PGPASSWORD or ~/.pgpass.
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/?#@:]*:[^\s/?#@]*@", re.I)
_URL_USER = re.compile(r"\bhttps?://[^\s/?#@]+@", re.I)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and its parsed TOML, refused as a whole when it is not safe to use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "configuration file not found", file=path, hint="run `outreach init` or pass --config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=path) from None
    try:
        # A BOM is what Notepad puts in front of UTF-8; TOML does not allow it.
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"byte 0x{data[exc.start]:02x} is not UTF-8 text",
            file=path,
            line=data.count(b"\n", 0, exc.start) + 1,
            hint="TOML files are UTF-8: save it as UTF-8",
        ) from None
    _check_nesting(text, path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError(
            f"TOML syntax: {exc.msg if hasattr(exc, 'msg') else exc}", file=path, line=line
        ) from None
    _refuse_secrets(raw, path, text)
    return text, raw


MAX_NESTING = 32  # arrays and inline tables in one value; a config needs three or four
_TOML_TOKENS = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}\n]',
    re.S,
)


def _check_nesting(text: str, path: Path) -> None:
    """Refuse arrays or inline tables nested deeper than MAX_NESTING, at the line where they
    pass it: tomllib recurses once per level and would end in a RecursionError."""
    depth, line = 0, 1
    for token in _TOML_TOKENS.finditer(text):
        kind = token.group()
        if kind[0] in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(
                    f"arrays or inline tables nested more than {MAX_NESTING} deep",
                    file=path,
                    line=line,
                    hint="a setting needs a few levels at most",
                )
        elif kind[0] in "]}":
            depth = max(depth - 1, 0)
        else:
            line += kind.count("\n")


def is_secret_name(key: str) -> bool:
    """Whether a setting called ``key`` would hold a secret (see SECRET_WORDS)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    parts = [part for part in re.split(r"[^a-z0-9]+", spaced) if part]
    if not parts or parts[-1] in ("env", "url"):
        return False
    compact = "".join(parts)
    return any(pair in compact for pair in SECRET_PAIRS) or any(
        part in SECRET_PARTS or part.endswith(SECRET_WORDS) or part.endswith(SECRET_PLURALS)
        for part in parts
    )


def _refuse_secrets(raw: dict[str, Any], path: Path, text: str) -> None:
    """Refuse a secret in the file, before validation (so its value is never in a message):
    a key named like one, credentials in a URL, a secret put where its variable's name goes."""

    def refuse(loc: tuple[Any, ...], message: str, hint: str) -> None:
        raise ConfigError(
            message, file=path, line=find_line(text, loc), field=dotted(loc), hint=hint
        )

    def walk(value: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                where = (*loc, key)
                if not isinstance(item, dict | list) and is_secret_name(str(key)):
                    refuse(
                        where,
                        "secrets never sit in the config file",
                        "name an environment variable instead (password_env for a mailbox, "
                        "secret_env for [crm], ..._env elsewhere); a template variable is "
                        "mailed to prospects, so a secret is never one",
                    )
                if (
                    isinstance(item, str)
                    and str(key).endswith("_env")
                    and not _ENV_NAME.fullmatch(item)
                ):
                    refuse(
                        where,
                        f"{key} is the name of an environment variable (like OUTREACH_PASSWORD), "
                        "not the secret itself",
                        "put the secret in that variable, and its name here",
                    )
                walk(item, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, (*loc, i))
        elif isinstance(value, str) and loc != ("database", "url"):  # its own, better message
            if _URL_PASSWORD.search(value) or _URL_USER.search(value):
                refuse(
                    loc,
                    "a URL with credentials in it would keep them in the file",
                    "take the user and password out of the URL; secrets come from the environment",
                )

    walk(raw, ())


def dotted(loc: tuple[Any, ...]) -> str:
    """``("mailboxes", 0, "email")`` -> ``mailboxes[0].email``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def find_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best effort: the line of ``[section]`` (the n-th ``[[section]]``) or of a key inside it."""
    keys = [part for part in loc if isinstance(part, str)]
    index = next((part for part in loc if isinstance(part, int)), 0)
    if not keys:
        return None
    lines = text.splitlines()
    headers = [
        n for n, line in enumerate(lines) if line.strip() in (f"[{keys[0]}]", f"[[{keys[0]}]]")
    ]
    if not headers:
        return None
    start = headers[min(index, len(headers) - 1)]
    if len(keys) == 1:
        return start + 1
    for n in range(start + 1, len(lines)):
        stripped = lines[n].strip()
        if stripped.startswith("["):
            break
        if re.match(rf"{re.escape(keys[1])}\s*=", stripped):
            return n + 1
    return start + 1
