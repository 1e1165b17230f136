"""``GET /v1/ready`` (confide.cas.readiness): 200 while the database answers, 503 StorageError
when it does not, and a probe that comes while a check still waits is answered 503 at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_cas_crl import _get

from cas_inproc import InProcessCas
from confide import __version__
from confide.cas.app import create_app
from confide.cas.db import Database

WAIT = 30.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[InProcessCas]:
    cas = InProcessCas.start(tmp_path / "cas", policy="")
    yield cas
    cas.cas.db.dispose()


def test_ready_while_the_database_answers(env: InProcessCas) -> None:
    status, _, body = _get(create_app(env.cas), "/v1/ready")
    assert status == 200
    assert json.loads(body) == {"status": "ready", "version": __version__}


def test_not_ready_when_the_database_does_not_answer(env: InProcessCas, refused_port: int) -> None:
    """A PostgreSQL server that refuses connections: 503 with the error shape (class
    StorageError, exit code 50), naming no URL; /v1/health still answers 200 (liveness)."""
    sqlite, env.cas.db = env.cas.db, Database(f"postgresql://confide:pw@127.0.0.1:{refused_port}/cas")
    try:
        app = create_app(env.cas)
        status, _, body = _get(app, "/v1/ready")
        assert _get(app, "/v1/health")[0] == 200
        assert _get(app, "/v1/ready")[0] == 503  # asked again: not a cached answer
    finally:
        env.cas.db.dispose()
        env.cas.db = sqlite
    error = json.loads(body)["error"]
    assert status == 503
    assert (error["class"], error["exit_code"]) == ("StorageError", 50)
    assert error["message"] == "not ready: database error: OperationalError"
    assert "pw" not in body.decode() and str(refused_port) not in body.decode()


def test_one_check_at_a_time(env: InProcessCas, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check waiting for the database holds no more than itself: the next probe gets 503 at
    once (it does not queue a second thread behind the first), and once the first returns the
    checks pass again."""
    app = create_app(env.cas)
    entered, release = threading.Event(), threading.Event()
    read = env.cas.db.read

    @contextmanager
    def slow_read() -> Iterator[Any]:
        entered.set()
        assert release.wait(WAIT)
        with read() as conn:
            yield conn

    monkeypatch.setattr(env.cas.db, "read", slow_read)
    first: list[int] = []
    waiting = threading.Thread(target=lambda: first.append(_get(app, "/v1/ready")[0]))
    waiting.start()
    try:
        assert entered.wait(WAIT)
        status, _, body = _get(app, "/v1/ready")
        assert status == 503
        assert "still waiting for the database" in json.loads(body)["error"]["message"]
    finally:
        release.set()
        waiting.join(WAIT)
    assert first == [200]
    assert _get(app, "/v1/ready")[0] == 200
