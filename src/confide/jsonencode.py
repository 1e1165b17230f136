"""JSON encoders made once, for the hot paths that encode one value per call (the CAS's ledger
entries, its release and its responses).

``json.JSONEncoder(...).encode(value)`` sets up its C encoder anew on every call: it enters
:meth:`json.JSONEncoder.iterencode` (a Python function), defines a ``floatstr`` closure and
builds a ``c_make_encoder`` object from nine arguments, calls it once and throws it away.
:func:`encoder` returns a function that calls the C encoder directly: the same text, for every
value, as ``JSONEncoder(**options).encode(value)``. Without ``check_circular`` the C encoder is
made once (an attestation's ledger payload with the ledger's options: ~34,000 instructions
against ~42,000); with it, the default, it is made per call with fresh markers and only
``iterencode``'s Python frame and closure are saved (``json.dumps``'s defaults: ~38,500 against
~44,700; callgrind, CPython 3.11).

What stays exactly as :meth:`json.JSONEncoder.encode` does it:

* a ``str`` value is written by the same string encoder (``encode_basestring`` or its ASCII
  twin), as ``encode`` does for it;
* circular references are detected (``check_circular``, the default): every call gets a fresh
  ``markers`` dict, as ``iterencode`` makes one per call, so a call that failed half way leaves
  nothing behind for the next;
* floats (``allow_nan``), ``default`` (``TypeError`` for what JSON cannot carry), ``skipkeys``,
  ``sort_keys`` and the separators are the C encoder's, given the encoder's own settings.

Where the C accelerator is missing (``json.encoder.c_make_encoder is None``) or ``indent`` is
given (which the C encoder does not do), the function is ``JSONEncoder.encode`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _stdlib
from typing import Any

__all__ = ["encoder"]


def encoder(**options: Any) -> Callable[[Any], str]:
    """``json.JSONEncoder(**options).encode``, with its C encoder made once (module docstring)."""
    base = json.JSONEncoder(**options)
    make: Any = getattr(_stdlib, "c_make_encoder", None)  # the C accelerator (not in typeshed)
    if make is None or base.indent is not None:  # pragma: no cover - CPython has the accelerator
        return base.encode
    # the arguments JSONEncoder.iterencode(o, _one_shot=True) gives c_make_encoder (CPython 3.11
    # to 3.13: markers, default, string encoder, indent, separators, sort_keys, skipkeys, allow_nan)
    strings = _stdlib.encode_basestring_ascii if base.ensure_ascii else _stdlib.encode_basestring
    circular = base.check_circular
    args = (base.default, strings, None, base.key_separator, base.item_separator,
            base.sort_keys, base.skipkeys, base.allow_nan)  # fmt: skip
    fast = make(None, *args)

    def encode(value: Any) -> str:
        if value.__class__ is str:
            return strings(value)
        if circular:
            # a fresh markers dict per call, as iterencode makes (its C encoder keeps none)
            return "".join(make({}, *args)(value, 0))
        return "".join(fast(value, 0))

    return encode
