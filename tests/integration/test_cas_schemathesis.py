"""Property-based API test: schemathesis generates requests from the CAS's OpenAPI schema and
checks that none makes the server fail (no 5xx) and that responses match the schema."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.db import Database
from confide.cas.secrets import Sealer
from confide.cas.verifier import PlatformVerifier
from confide.sim.platform import SimPlatform


def _app(tmp: Path):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp / 'cas.db'}")
    db.migrate()
    platform = SimPlatform.generate()
    # No TLS here: the key hash read requests must name is one no certificate has.
    cas = Cas(db, Sealer(bytes(32)), PlatformVerifier(sim_key=platform.public_key), tls_spki_sha256="00" * 32)
    return create_app(cas)


_TMP = Path(__import__("tempfile").mkdtemp(prefix="confide-schema-"))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(_TMP))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_generated_input(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
