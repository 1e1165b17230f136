"""``GET /v1/ready``: whether this CAS can serve requests now, for a load balancer's or
Kubernetes' readiness probe (docs/cas.md "HTTP API", docs/deploy.md).

``GET /v1/health`` answers from memory as long as the process serves HTTP (a liveness probe:
restart a CAS that stopped answering). ``GET /v1/ready`` also reads from the database, so that
a replica whose database (PostgreSQL) is unreachable is taken out of rotation instead of
answering 503 to every request that needs it; it is not restarted for it (a database outage is
not cured by restarting every replica).

One check runs at a time: a probe that comes while one is still waiting for the database (a
server that does not answer: libpq waits for the TCP connect) is answered 503 at once instead of
queueing behind it, so slow checks never take more than one thread of the request pool.
"""

from __future__ import annotations

import threading

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from confide.cas.db import Database
from confide.errors import StorageError

__all__ = ["Readiness"]


class Readiness:
    """The check behind ``GET /v1/ready`` for the database ``db``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._running = threading.Lock()

    def check(self) -> None:
        """Returns once the database answered a read (``SELECT 1`` in a read transaction); a
        :class:`StorageError` (503) when it did not, or while another check is still waiting."""
        if not self._running.acquire(blocking=False):
            raise StorageError("not ready: the previous readiness check is still waiting for the database")
        try:
            with self._db.read() as conn:
                conn.execute(text("SELECT 1")).scalar_one()
        except SQLAlchemyError as exc:  # what Database.read does not map already
            raise StorageError(f"not ready: database error: {type(exc).__name__}") from None
        except StorageError as exc:
            raise StorageError(f"not ready: {exc.message}") from None
        finally:
            self._running.release()
