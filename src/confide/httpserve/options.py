"""Command-line options the servers (``cas serve``, ``ledger serve``, ``ledger witness serve``)
share, kept apart from :mod:`confide.httpserve.certreload` so that ``confide``'s command line
imports no TLS or metrics code to define them."""

from __future__ import annotations

import click

__all__ = ["MIN_POLL_INTERVAL", "reload_interval"]

MIN_POLL_INTERVAL = 1.0
"""The shortest ``--cert-reload-interval``/``--metrics-reload-interval`` (seconds) but 0: each
poll stats the files, and a shorter interval (``0.0001`` was taken) is busy polling."""


def reload_interval(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A click callback: ``value`` of a reload-interval option (already 0 to 86400) refused
    between 0 and :data:`MIN_POLL_INTERVAL` (a usage error naming the option, exit 2); 0 keeps
    meaning "on ``SIGHUP`` only"."""
    if 0 < value < MIN_POLL_INTERVAL:
        raise click.BadParameter(
            f"{value:g} is less than {MIN_POLL_INTERVAL:g} second: 0 (on SIGHUP only) or at least "
            f"{MIN_POLL_INTERVAL:g}",
            param=param,
        )
    return value
