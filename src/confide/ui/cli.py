"""``confide ui``: serve the stakeholders' web page on this machine (docs/ui.md)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import sys
from pathlib import Path

import click

from confide.errors import UsageError

__all__ = ["default_state_file", "parse_listen", "ui"]

_PATH = click.Path(path_type=Path)


def parse_listen(listen: str) -> tuple[str, int, frozenset[str]]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``localhost``) on a loopback address only: the
    address to bind, its port and the ``Host`` header values the page answers to (with the port
    bound filled in later for port 0). A non-loopback address is a ``UsageError``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        raise UsageError(f"--listen: got {listen!r}, expected HOST:PORT (e.g. 127.0.0.1:8765)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.lower() == "localhost":
        bare = "127.0.0.1"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise UsageError(
            f"--listen: got host {host!r}, expected a loopback IP address or localhost"
        ) from None
    if not address.is_loopback:
        raise UsageError(
            f"--listen: {host} is not a loopback address: the page signs with your identity and is served "
            "over plain HTTP, so it listens on this machine only (from another machine, forward the "
            "same port over SSH: ssh -L PORT:127.0.0.1:PORT HOST)"
        )
    shown = f"[{address}]" if address.version == 6 else str(address)
    return str(address), int(port), frozenset({shown, "localhost"})


def default_state_file(log_key: str) -> Path:
    """``$XDG_CONFIG_HOME/confide/ui/<log key digest>.state`` (default ``~/.config``): one file
    per CAS log, as a state file is bound to its log key."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    digest = hashlib.sha256(log_key.strip().encode()).hexdigest()[:16]
    return base / "confide" / "ui" / f"{digest}.state"


@click.command("ui")
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="HOST:PORT on a loopback address (port 0: a free port).",
)
@click.option(
    "--identity",
    "identity_file",
    type=_PATH,
    help="Your identity file (mode 0600): held by this process only. Without it, load one "
    "from the page by its path.",
)
@click.option(
    "--env-file",
    type=_PATH,
    help="The CAS's client.env (default: its variables in this environment, CONFIDE_CAS_URL ...).",
)
@click.option(
    "--state",
    "state_file",
    type=_PATH,
    help="The state file of the policies' ledger views (default: one per CAS log under "
    "$XDG_CONFIG_HOME/confide/ui/).",
)
def ui(listen: str, identity_file: Path | None, env_file: Path | None, state_file: Path | None) -> None:
    """Serve the stakeholders' web page on this machine: see who you are and which CAS, read
    policies, their events, verified history and accesses, apply, approve, revoke.

    Prints the page's URL with its access token (single use: open it in one browser; its
    cookie is valid until the process ends). Stop it with Ctrl-C.

    \b
    Example:
      confide ui --identity alice.id --env-file /tmp/cas/client.env
    """
    from confide.httpserve.limits import HttpLimits
    from confide.httpserve.server import HttpServer
    from confide.identity import load_identity
    from confide.sdk import Cas, _parse_env_file
    from confide.ui.app import UiState, cert_sha256, create_app

    host, port, names = parse_listen(listen)
    identity = load_identity(identity_file) if identity_file is not None else None
    environ = _parse_env_file(env_file) if env_file is not None else dict(os.environ)
    cas = Cas.from_env(environ)
    try:
        if state_file is None and cas.log_key:
            state_file = default_state_file(cas.log_key)
        if state_file is not None:
            try:
                state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise UsageError(f"--state: cannot create {state_file.parent}: {exc.strerror}") from None
        state = UiState(cas, identity, state_file, cert_sha256(environ.get("CONFIDE_CAS_CERT")))
        app = create_app(state)
        try:
            server = HttpServer(
                app,
                (host, port),
                limits=HttpLimits(max_connections=64, max_connections_per_client=64, log_name="confide.ui"),
            )
        except OSError as exc:
            raise UsageError(f"--listen {listen}: {exc.strerror or exc}") from None
        bound = server.server_address[1]
        state.port = bound
        state.allowed_hosts = frozenset(f"{n}:{bound}" for n in names)
        shown = f"[{host}]" if ":" in host else host
        who = identity.fingerprint if identity is not None else "no identity yet"
        click.echo(f"confide ui: serving {cas.url} as {who} on http://{shown}:{bound}/", err=True)
        click.echo(f"http://{shown}:{bound}/?token={state.token}")
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.server_close()
    finally:
        cas.close()
