"""The registry commands: ``pull``, ``push``, ``login`` and ``logout``.

Each parses its flags and calls ``registry.py`` (the distribution API client) or
``auth.py`` (the credentials in ``~/.docker/config.json``). Progress goes to standard
output: bars on a terminal, one line per layer otherwise. Registries other than loopback
ones are spoken to over verified TLS unless listed in ``$MINIDOCK_INSECURE_REGISTRIES``;
a name without a registry host uses ``$MINIDOCK_REGISTRY``.
"""

from __future__ import annotations

import os
import sys

import click

from minidock.cli import _CONTEXT, _engine
from minidock.errors import InvalidArgument


def _server(server: str | None) -> str:
    """The registry a login or logout is about: the argument, else ``$MINIDOCK_REGISTRY``."""
    server = server or os.environ.get("MINIDOCK_REGISTRY")
    if not server:
        raise InvalidArgument("no registry given, and no default one ($MINIDOCK_REGISTRY)")
    return server


@click.command(context_settings=_CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.option("--platform", help="OS/ARCH[/VARIANT] to choose from a multi-platform image.")
@click.argument("ref")
@click.pass_context
def pull(ctx: click.Context, quiet: bool, platform: str | None, ref: str) -> None:
    """Download an image from a registry: REGISTRY/REPOSITORY[:TAG|@DIGEST]."""
    from minidock import registry

    registry.pull(_engine(ctx), ref, quiet=quiet, platform=platform, out=sys.stdout)
    click.echo(registry.parse_reference(ref, os.environ.get("MINIDOCK_REGISTRY")))


@click.command(context_settings=_CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.argument("ref")
@click.pass_context
def push(ctx: click.Context, quiet: bool, ref: str) -> None:
    """Upload an image to a registry: REGISTRY/REPOSITORY[:TAG]."""
    from minidock import registry

    registry.push(_engine(ctx), ref, quiet=quiet, out=sys.stdout)
    if quiet:
        click.echo(registry.parse_reference(ref, os.environ.get("MINIDOCK_REGISTRY")))


@click.command(context_settings=_CONTEXT)
@click.option("-u", "--username", help="Username.")
@click.option(
    "-p", "--password", help="Password (visible to other users: prefer --password-stdin)."
)
@click.option("--password-stdin", is_flag=True, help="Take the password from stdin.")
@click.argument("server", required=False)
def login(
    username: str | None, password: str | None, password_stdin: bool, server: str | None
) -> None:
    """Log in to a registry: check the credentials, then store them in config.json."""
    from minidock import auth, registry

    server = _server(server)
    if password_stdin:
        if password:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive")
        if not username:
            raise InvalidArgument("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    elif password:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
                   err=True)  # fmt: skip
    username = username or click.prompt("Username")
    password = password or click.prompt("Password", hide_input=True)
    path = registry.login(server, auth.Credentials(username, password))
    click.echo(f"WARNING! Your password is stored unencrypted in {path}.", err=True)
    click.echo("Login Succeeded")


@click.command(context_settings=_CONTEXT)
@click.argument("server", required=False)
def logout(server: str | None) -> None:
    """Log out from a registry: forget its credentials."""
    from minidock import auth

    host = auth.registry_key(_server(server))
    if auth.remove_credentials(host):
        click.echo(f"Removing login credentials for {host}")
    else:
        click.echo(f"Not logged in to {host}")


#: Everything this module adds to the ``minidock`` group.
COMMANDS = {"pull": pull, "push": push, "login": login, "logout": logout}
