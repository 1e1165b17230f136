"""Server-rendered HTML for ``confide ui``: every value is escaped unless it is :class:`Html`.

Strings from the CAS and from policies are the operator's and the policy authors' words: they
reach a page only through :func:`h` (or :func:`esc`), which escapes ``& < > " '``. Markup this
module builds is :class:`Html`, a ``str`` that :func:`h` passes through as it is.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

__all__ = ["CSS", "JS", "Html", "esc", "h", "join", "page"]


class Html(str):
    """Markup that is already safe: built by :func:`h` from escaped values."""

    __slots__ = ()


def esc(value: object) -> Html:
    """``value`` as text in HTML (element content or a quoted attribute value)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def h(template: str, *args: object) -> Html:
    """``template`` (trusted markup with ``{}`` fields, no other braces) with each argument
    escaped, unless it is :class:`Html`."""
    return Html(template.format(*(esc(a) for a in args)))


def join(parts: Iterable[Html], sep: str = "") -> Html:
    return Html(sep.join(esc(p) for p in parts))


def page(title: str, body: Html, *, who: str | None, cas_url: str, trust: str = "") -> Html:
    """A whole document: the header (who, which CAS and how it is trusted), ``body``, the
    script and style files of this server (``script-src 'self'``: no inline script)."""
    ident = h("<code>{}…</code>", who[:16]) if who else Html("<em>no identity loaded</em>")
    return h(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{} · confide</title>"
        '<link rel="stylesheet" href="/static/ui.css"><script src="/static/ui.js" defer></script>'
        '</head><body><header><nav><a href="/">confide</a> <a href="/apply">apply a policy</a> '
        '<a href="/successor">successor board</a></nav>'
        '<p class="who">identity {} · CAS <code>{}</code>{}</p></header><main><h1>{}</h1>{}</main>'
        "<footer>confide ui: a local page; your identity stays in the <code>confide ui</code> "
        "process.</footer>"
        "</body></html>\n",
        title,
        ident,
        cas_url,
        h(" · trusted by {}", trust) if trust else Html(""),
        title,
        body,
    )


CSS = b"""body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#23364a;color:#fff;padding:.5em 1em}header a{color:#fff;margin-right:1em}
header .who{margin:.2em 0 0;font-size:.85em}main{padding:1em;max-width:80em}
footer{padding:1em;font-size:.8em;color:#666}code,pre{font-family:ui-monospace,monospace}
pre{background:#fff;border:1px solid #ddd;padding:.5em;overflow:auto;max-height:40em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#eee}
.error{border:2px solid #b00020;background:#fdecee;padding:.5em 1em;margin:1em 0}
.ok{border:2px solid #1b7d2f;background:#eaf6ec;padding:.5em 1em;margin:1em 0}
.note{border:1px solid #aaa;background:#fff;padding:.5em 1em;margin:1em 0}
.add{color:#1b5e20;background:#e8f5e9}.del{color:#b71c1c;background:#ffebee}
.hunk{color:#555}.bad{background:#ffe0e0}textarea{width:100%;height:24em;font-family:monospace}
textarea.short{height:5em}
form.inline{display:inline}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dt{font-weight:bold}dd{margin:0;word-break:break-all}
"""

JS = b"""// confide ui: ask before a signed action (forms marked data-confirm). Nothing else: the page
// works without it.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) { event.preventDefault(); }
});
"""
