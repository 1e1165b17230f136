"""Read requests are served once (docs/cas.md "Reading a policy"), end to end: a real
``confide cas serve`` over TLS, on SQLite and PostgreSQL (fixture ``cas``). Every command that
reads (``policy show``, ``policy events``, ``policy crl``, ``ledger history``, ``ledger
accesses``) asks the CAS for a read nonce and signs a ``confide/read/v3`` request over it; the
same request sent again is refused, also when sent many times at once; a nonce of another route
or policy is refused; a ``confide/read/v2`` request is refused with a message to upgrade. An
expired nonce is refused on the CAS's clock, which the in-process tests move
(``tests/unit/test_cas_read_binding.py``) instead of waiting here a minute."""

from __future__ import annotations

import base64
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import apply, confide, identity

from cas_harness import CasProcess
from confide.cas.client import CasClient
from confide.cas.core import READ_TYPE, READ_V2_TYPE, sign_document
from confide.identity import Identity, load_identity

POLICY = """name: rn
version: "0.3"
secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Read Nonce CA
    valid_for: 90 days
  - name: pw
    kind: ascii
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""


def _header(doc: dict[str, Any]) -> dict[str, str]:
    return {"X-Confide-Read": base64.b64encode(json.dumps(doc).encode()).decode()}


def _read(client: CasClient, who: Identity, route: str, nonce: str, name: str = "rn") -> dict[str, str]:
    assert client.cas_spki_sha256 is not None
    body = {"type": READ_TYPE, "name": name, "nonce": nonce, "cas": client.cas_spki_sha256, "route": route}
    return _header(sign_document(body, who.sign, who.public.public_base64))


PATHS = {"show": "/v1/policies/rn", "events": "/v1/policies/rn/events", "crl": "/v1/policies/rn/crl/ca"}


def _error(response: Any) -> tuple[int, str, str]:
    err = response.json()["error"]
    return response.status_code, err["class"], err["message"]


def test_reads_are_served_once(cas: CasProcess, tmp_path: Path) -> None:
    alice_file, _ = identity(cas, tmp_path, "alice")
    alice = load_identity(alice_file)
    apply(cas, tmp_path, POLICY, alice_file)
    client = CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"]))
    with client:
        # Every command that reads still works (each read over a nonce of its own).
        shown = json.loads(
            confide(cas, "policy", "show", "rn", "--identity", str(alice_file), check=True).stdout
        )
        assert shown["name"] == "rn"
        events = confide(cas, "policy", "events", "rn", "--identity", str(alice_file), check=True).stdout
        assert "policy-created" in events
        crl = confide(cas, "policy", "crl", "rn", "ca", "--identity", str(alice_file), check=True).stdout
        assert x509.load_pem_x509_crl(crl.encode()).issuer.rfc4514_string() == "CN=Read Nonce CA"
        history = confide(cas, "ledger", "history", "rn", "--identity", str(alice_file), "--json", check=True)
        assert [h["event"] for h in json.loads(history.stdout)["history"]] == ["policy.created"]
        accesses = confide(
            cas, "ledger", "accesses", "rn/pw", "--identity", str(alice_file), "--json", check=True
        )
        assert json.loads(accesses.stdout) == []  # no service attested: nothing released
        assert client.show("rn", alice)["name"] == "rn"

        # Each route: served once; sent again, refused; sent 8 times at once, served once.
        for route, path in PATHS.items():
            sent = _read(client, alice, route, client.read_nonce("rn", route))
            assert client.http.get(path, headers=sent).status_code == 200
            status, cls, message = _error(client.http.get(path, headers=sent))
            assert (status, cls) == (403, "AccessDeniedError") and "served before" in message
            at_once = _read(client, alice, route, client.read_nonce("rn", route))
            with ThreadPoolExecutor(8) as pool:
                statuses = sorted(
                    pool.map(lambda _: client.http.get(path, headers=at_once).status_code, range(8))
                )
            assert statuses == [200] + [403] * 7

        # A nonce of another route, or of another policy: refused, and not spent by it.
        for_events = client.read_nonce("rn", "events")
        status, _cls, message = _error(
            client.http.get(PATHS["show"], headers=_read(client, alice, "show", for_events))
        )
        assert status == 403 and "read nonce was issued for events, not show" in message
        assert (
            client.http.get(PATHS["events"], headers=_read(client, alice, "events", for_events)).status_code
            == 200
        )
        for_other = client.read_nonce("rn-other", "show")
        status, _cls, message = _error(
            client.http.get(PATHS["show"], headers=_read(client, alice, "show", for_other))
        )
        assert status == 403 and "not issued by this CAS for policy 'rn'" in message

        # The former confide/read/v2 (a time, no nonce): refused, telling the client to upgrade.
        old = {"type": READ_V2_TYPE, "name": "rn", "time": int(time.time()), "cas": client.cas_spki_sha256,
               "route": "show"}  # fmt: skip
        response = client.http.get(
            PATHS["show"], headers=_header(sign_document(old, alice.sign, alice.public.public_base64))
        )
        status, cls, message = _error(response)
        assert (status, cls) == (400, "ParseError") and "upgrade the client" in message
