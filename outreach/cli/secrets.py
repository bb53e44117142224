"""Stored secrets: a new encryption key, and re-encrypting the OAuth grants with it."""

from __future__ import annotations

import click

from outreach.cli.base import Context, cli, pass_ctx


@cli.group("secrets")
def secrets_group() -> None:
    """The key that encrypts the stored OAuth grants ([secrets] key_env)."""


@secrets_group.command("key")
def secrets_key() -> None:
    """Print a new random key, for the environment variable [secrets] key_env names."""
    from outreach.secrets import new_key

    click.echo(new_key())


@secrets_group.command("rotate")
@pass_ctx
def secrets_rotate(ctx: Context) -> None:
    """Re-encrypt every stored grant with the first key of [secrets] key_env (put the new key
    first, the old one after a comma; once rotated, the old one can go)."""
    from outreach import grants
    from outreach.secrets import Vault

    vault = Vault.from_env(ctx.ws.config.settings.secrets.key_env)
    count = grants.rotate_key(ctx.ws.store, vault)
    click.echo(f"{count} grant(s) re-encrypted with the first key of {vault.env}")
