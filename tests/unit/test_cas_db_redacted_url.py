"""``Database.redacted_url``: what the CAS's start line and its database errors show of ``--db``.
No credential: the password of the user info, nor one given as a query parameter (libpq takes
``password`` and ``sslpassword`` there too)."""

from __future__ import annotations

import pytest

from confide.cas.db import Database


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://cas:pw@db:5432/confide", "postgresql://***@db:5432/confide"),
        ("postgresql://cas@db/confide?connect_timeout=10", "postgresql://***@db/confide?connect_timeout=10"),
        (
            "postgresql://cas@db/confide?password=hunter2&sslmode=require",
            "postgresql://***@db/confide?password=***&sslmode=require",
        ),
        (
            "postgresql://db/confide?sslpassword=k3y&PassWord=hunter2",
            "postgresql://db/confide?sslpassword=***&PassWord=***",
        ),
        ("postgresql://db?password=hunter2", "postgresql://db?password=***"),
        ("postgresql://c:p@ss@db/x", "postgresql://***@db/x"),  # an '@' left unencoded in the password
        # a '?', '#' or '/' left unencoded in the password: SQLAlchemy takes it as the password's
        # (a '?' was taken as the query's start, and the whole password shown)
        ("postgresql://c:p?ss@db/x", "postgresql://***@db/x"),
        ("postgresql://c:p#ss@db/x", "postgresql://***@db/x"),
        ("postgresql://c:p/ss@db/x", "postgresql://***@db/x"),
        ("postgresql://c:p?ss@db/x?password=hunter2", "postgresql://***@db/x?password=***"),
        ("sqlite:////srv/a@b/cas.db", "sqlite:////srv/a@b/cas.db"),  # a path, no user info
    ],
)
def test_no_credential_is_shown(url: str, shown: str) -> None:
    db = Database(url)
    try:
        assert db.redacted_url == shown
        for secret in ("pw", "hunter2", "k3y", "p@ss", "p?ss", "p#ss", "p/ss"):
            assert secret not in db.redacted_url.replace("/***@", "/"), secret
    finally:
        db.dispose()
