"""The CAS HTTP API's authorisation matrix (docs/cas.md "HTTP API", "Policies and governance"),
over real TLS against a real ``confide cas serve`` process: for every route of the OpenAPI
schema (read from the running CAS, so a new route without an entry here fails
:func:`test_every_route_has_an_entry`), what each class of caller gets: the policy's owner
(its creator), an identity on its ``read`` list, one on its ``update`` list, a board member who
is not an owner, a stranger with a valid identity, no signature, a valid signature over a
request for another policy, a replayed request (a read is served once: docs/cas.md "Reading a
policy"), a read nonce of another route or policy, a document of another endpoint's type, and an
expired or future-dated revocation request. A refused caller must learn nothing: the refusal of
an existing policy is the refusal of a policy that does not exist, byte for byte once the name
is the same."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from cas_harness import CasProcess
from cas_inproc import submission
from confide.cas.core import (
    APPROVAL_TYPE,
    POLICY_TYPE,
    POLICY_V1_TYPE,
    READ_NONCE_PATH,
    READ_TYPE,
    READ_V2_TYPE,
    READ_WINDOW,
    sign_document,
    spki_sha256,
)
from confide.cas.owner_revocation import REVOKE_TYPE, REVOKE_V1_TYPE
from confide.identity import Identity


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> tuple[str, str]:
        err = self.json()["error"]
        return err["class"], err["message"]


@dataclass
class World:
    cas: CasProcess
    owner: Identity
    reader: Identity
    updater: Identity
    board: tuple[Identity, Identity]
    stranger: Identity
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def spki(self) -> str:
        """The SHA-256 of the CAS's TLS key (SubjectPublicKeyInfo): what a read request names."""
        pem = Path(self.cas.env["CONFIDE_CAS_CERT"]).read_bytes()
        return spki_sha256(x509.load_pem_x509_certificate(pem))

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        url = urlsplit(self.cas.env["CONFIDE_CAS_URL"])
        ctx = ssl.create_default_context(cafile=self.cas.env["CONFIDE_CAS_CERT"])
        conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=ctx, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            r = conn.getresponse()
            return Answer(r.status, r.read(), {k.lower(): v for k, v in r.getheaders()})
        finally:
            conn.close()

    def submission(self, text: str, who: Identity, cas: str | None = None) -> dict[str, Any]:
        """``who``'s signed submission of ``text`` for the CAS under test (or the one whose TLS
        key hash is ``cas``)."""
        return submission(self.spki if cas is None else cas, text, who)

    def submit(self, text: str, who: Identity, cas: str | None = None) -> Answer:
        return self.call("POST", "/v1/policies", self.submission(text, who, cas))


def signed(body: dict[str, Any], who: Identity) -> dict[str, Any]:
    return sign_document(body, who.sign, who.public.public_base64)


def read_nonce(w: World, name: str, route: str) -> str:
    """A read nonce the CAS under test issues for ``name`` and ``route`` (to anyone)."""
    answer = w.call("POST", READ_NONCE_PATH, {"name": name, "route": route})
    assert answer.status == 200, answer.body
    return str(answer.json()["nonce"])


def read_doc(
    w: World,
    name: str,
    who: Identity,
    *,
    route: str = "show",
    cas: str | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """A signed read request for ``route``, for the CAS under test (or the one whose TLS key hash
    is ``cas``), over ``nonce`` or one the CAS issues for ``name`` and ``route`` now."""
    body = {"type": READ_TYPE, "name": name, "nonce": nonce or read_nonce(w, name, route),
            "cas": w.spki if cas is None else cas, "route": route}  # fmt: skip
    return signed(body, who)


def header(doc: dict[str, Any]) -> dict[str, str]:
    return {"X-Confide-Read": base64.b64encode(json.dumps(doc).encode()).decode()}


def revoke_doc(
    w: World, name: str, who: Identity, *, at: int | None = None, cas: str | None = None
) -> dict[str, Any]:
    """A signed revocation request for the CAS under test (or the one whose TLS key hash is
    ``cas``)."""
    when = int(time.time()) if at is None else at
    return signed(
        {"type": REVOKE_TYPE, "name": name, "secret": "srv", "reason": "superseded", "all_valid": True,
         "time": when, "cas": w.spki if cas is None else cas},
        who,
    )  # fmt: skip


def _access(read: list[str], update: str) -> str:
    return f"access_policy:\n  read: [{', '.join(read)}]\n  update: {update}\n"


SECRETS = """secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Matrix CA
    valid_for: 90 days
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    valid_for: 30 days
  - name: token
    kind: ascii
"""


def policy_text(name: str, access: str, predecessor: str | None = None, extra: str = "") -> str:
    pred = f'predecessor: "{predecessor}"\n' if predecessor else ""
    return f'name: {name}\nversion: "0.3"\n{pred}{access}{SECRETS}{extra}'


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("authz") / "cas"
    cas = CasProcess(data, None, extra_args=("--write-rate", "0")).start()
    try:
        owner, reader, updater, stranger = (Identity.generate() for _ in range(4))
        board = (Identity.generate(), Identity.generate())
        w = World(cas, owner, reader, updater, board, stranger)
        # mx: the owner, a reader, an updater. mxb: updated by a board of two (not owners).
        # mxns: a namespace whose policy mxns/exists exists; its children are the owner's.
        texts = {
            "mx": policy_text(
                "mx", _access(["CREATOR", reader.fingerprint], f"[CREATOR, {updater.fingerprint}]")
            ),
            "mxb": policy_text(
                "mxb",
                _access(["CREATOR"], f"[{{require-all: [{board[0].fingerprint}, {board[1].fingerprint}]}}]"),
            ),
            "mxns": policy_text("mxns", _access(["CREATOR"], "[CREATOR]")),
            "mxns/exists": policy_text("mxns/exists", _access(["CREATOR"], "[CREATOR]")),
        }
        for name, text in texts.items():
            answer = w.submit(text, owner)
            assert answer.status == 200, answer.body
            w.hashes[name] = answer.json()["hash"]
        yield w
    finally:
        cas.stop()


# -- the matrix: one check per (method, OpenAPI path) ---------------------------------------


def same_refusal(w: World, existing: Answer, missing: Answer, existing_name: str, missing_name: str) -> None:
    """A refused caller learns nothing: status, class and message are those of a policy that does
    not exist (once its name replaces the other's)."""
    assert existing.status == missing.status == 403, (existing.body, missing.body)
    assert existing.error()[0] == missing.error()[0] == "AccessDeniedError"
    assert existing.error()[1].replace(existing_name, "NAME") == missing.error()[1].replace(
        missing_name, "NAME"
    )


def check_show(w: World) -> None:
    for who in (w.owner, w.reader):
        answer = w.call("GET", "/v1/policies/mx", headers=header(read_doc(w, "mx", who)))
        assert answer.status == 200 and answer.json()["name"] == "mx"
        # What a reader sees depends on its X-Confide-Read header, which no HTTP cache knows
        # to key on (RFC 9111 §3.5 covers Authorization only): never stored by one.
        assert answer.headers["cache-control"] == "no-store"
        assert "token" in answer.json()["secrets"] and "value" not in json.dumps(
            answer.json()["secrets"]["token"]
        )
    for who in (w.updater, w.board[0], w.stranger):  # on no read list
        same_refusal(
            w,
            w.call("GET", "/v1/policies/mx", headers=header(read_doc(w, "mx", who))),
            w.call("GET", "/v1/policies/mx-none", headers=header(read_doc(w, "mx-none", who))),
            "mx", "mx-none",
        )  # fmt: skip
    # No signature.
    answer = w.call("GET", "/v1/policies/mx")
    assert answer.status == 403 and answer.error()[0] == "AccessDeniedError"
    # A reader's valid request for another policy, sent for this one.
    answer = w.call("GET", "/v1/policies/mxb", headers=header(read_doc(w, "mx", w.reader)))
    assert answer.status == 400 and answer.error()[0] == "ParseError"
    # Another endpoint's document type as a read (an approval, a revocation, a submission).
    for doc in (
        signed({"type": APPROVAL_TYPE, "name": "mx", "hash": w.hashes["mx"], "cas": w.spki}, w.owner),
        revoke_doc(w, "mx", w.owner),
        w.submission(policy_text("mx", ""), w.owner),
    ):
        answer = w.call("GET", "/v1/policies/mx", headers=header(doc))
        assert answer.status == 400 and answer.error()[0] == "ParseError", answer.body
    # Malformed headers: a parse error that names no value, never a 500.
    good = read_doc(w, "mx", w.owner)
    for raw in (
        "not base64!",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"[1]").decode(),
        header({**good, "signer": "AAAA"})["X-Confide-Read"],
        header({**good, "signature": "AAAA"})["X-Confide-Read"],
        header({k: v for k, v in good.items() if k != "signature"})["X-Confide-Read"],
        header({**good, "nonce": good["nonce"].upper()})["X-Confide-Read"],
        header({**good, "time": int(time.time())})["X-Confide-Read"],
    ):
        answer = w.call("GET", "/v1/policies/mx", headers={"X-Confide-Read": raw})
        assert answer.status in (400, 403), (raw, answer.status, answer.body)
        assert answer.error()[0] in ("ParseError", "SignatureError", "AccessDeniedError"), answer.body
    # A read with the type field rewritten is not signed by anyone.
    forged = {**revoke_doc(w, "mx", w.owner), "type": READ_TYPE}
    assert w.call("GET", "/v1/policies/mx", headers=header(forged)).status == 403
    check_bound_reads(w, "/v1/policies/{}", "show")


OTHER_CAS = hashlib.sha256(b"another CAS's SubjectPublicKeyInfo").hexdigest()


def check_bound_reads(w: World, path: str, route: str) -> None:
    """A read request is for one CAS and one route, and served once (docs/cas.md "Reading a
    policy"): the owner's own request, signed for another CAS (whose TLS key hash is not this
    one's) or for another route, is refused like any other refusal: 403, AccessDeniedError, and
    for an existing policy the very answer a missing one gets. Sent again, a served request is
    refused, as is one over a nonce issued for another route or policy. A request in an old
    format (no ``cas`` nor ``route``; a ``confide/read/v2`` time and no nonce) is malformed."""
    others = [r for r in ("show", "events", "crl") if r != route]
    # The right request first, so that what is refused below is refused for its binding only.
    served = header(read_doc(w, "mx", w.owner, route=route))
    assert w.call("GET", path.format("mx"), headers=served).status == 200
    again = w.call("GET", path.format("mx"), headers=served)
    assert again.status == 403 and again.error()[0] == "AccessDeniedError", again.body
    assert "served before" in again.error()[1]
    for other in others:  # a nonce of another route, in a request for this one
        nonce = read_nonce(w, "mx", other)
        answer = w.call(
            "GET", path.format("mx"), headers=header(read_doc(w, "mx", w.owner, route=route, nonce=nonce))
        )
        assert answer.status == 403 and f"read nonce was issued for {other}, not {route}" in answer.error()[1]
    nonce = read_nonce(w, "mxb", route)  # of another policy
    answer = w.call(
        "GET", path.format("mx"), headers=header(read_doc(w, "mx", w.owner, route=route, nonce=nonce))
    )
    assert answer.status == 403 and "not issued by this CAS for policy 'mx'" in answer.error()[1]
    # The refusal did not spend it: the read it was issued for is served.
    mxb = w.call(
        "GET", path.format("mxb"), headers=header(read_doc(w, "mxb", w.owner, route=route, nonce=nonce))
    )
    assert mxb.status == 200, mxb.body
    for who in (w.owner, w.stranger):
        for cas, for_route in ((OTHER_CAS, route), *((w.spki, r) for r in others)):
            same_refusal(
                w,
                w.call("GET", path.format("mx"), headers=header(read_doc(w, "mx", who, route=for_route, cas=cas))),
                w.call(
                    "GET", path.format("mx-none"),
                    headers=header(read_doc(w, "mx-none", who, route=for_route, cas=cas)),
                ),
                "mx", "mx-none",
            )  # fmt: skip
    old_format = signed({"type": "confide/read/v1", "name": "mx", "time": int(time.time())}, w.owner)
    unbound = {
        k: v for k, v in read_doc(w, "mx", w.owner, route=route).items() if k not in ("cas", "signature")
    }
    for doc in (old_format, signed(unbound, w.owner)):
        answer = w.call("GET", path.format("mx"), headers=header(doc))
        assert answer.status == 400 and answer.error()[0] == "ParseError", answer.body
    v2 = signed({"type": READ_V2_TYPE, "name": "mx", "time": int(time.time()), "cas": w.spki, "route": route},
                w.owner)  # fmt: skip
    answer = w.call("GET", path.format("mx"), headers=header(v2))
    assert answer.status == 400 and answer.error()[0] == "ParseError", answer.body
    assert "upgrade the client" in answer.error()[1]


def check_events(w: World) -> None:
    answer = w.call(
        "GET", "/v1/policies/mx/events", headers=header(read_doc(w, "mx", w.reader, route="events"))
    )
    assert answer.status == 200 and answer.json()["events"]
    assert answer.headers["cache-control"] == "no-store"
    # A policy named mx/events, shown through the events route, and one named mx/crl/ca through
    # the CRL route (the read request names the policy): the same.
    for name in ("mx/events", "mx/crl/ca"):
        assert w.submit(policy_text(name, _access(["CREATOR"], "[CREATOR]")), w.owner).status == 200
        answer = w.call("GET", f"/v1/policies/{name}", headers=header(read_doc(w, name, w.owner)))
        assert answer.status == 200 and answer.json()["name"] == name
        assert answer.headers["cache-control"] == "no-store"
    for who in (w.updater, w.board[0], w.stranger):
        same_refusal(
            w,
            w.call("GET", "/v1/policies/mx/events", headers=header(read_doc(w, "mx", who, route="events"))),
            w.call("GET", "/v1/policies/mx-none/events", headers=header(read_doc(w, "mx-none", who, route="events"))),
            "mx", "mx-none",
        )  # fmt: skip
    assert w.call("GET", "/v1/policies/mx/events").status == 403
    answer = w.call(
        "GET", "/v1/policies/mx/events", headers=header(read_doc(w, "mxb", w.owner, route="events"))
    )
    assert answer.status == 400
    approval = signed({"type": APPROVAL_TYPE, "name": "mx", "hash": w.hashes["mx"], "cas": w.spki}, w.owner)
    assert w.call("GET", "/v1/policies/mx/events", headers=header(approval)).status == 400
    check_bound_reads(w, "/v1/policies/{}/events", "events")


def check_read_policies(w: World) -> None:
    """The policies a signer may read (route ``list``, nonce issued for the name ``""``): each sees
    the names its read rights cover and no other; nothing without a signed list request."""

    def listed(who: Identity) -> set[str]:
        answer = w.call("GET", "/v1/read/policies", headers=header(read_doc(w, "", who, route="list")))
        assert answer.status == 200, answer.body
        assert answer.headers["cache-control"] == "no-store"
        return set(answer.json()["policies"])

    assert {"mx", "mxb", "mxns", "mxns/exists"} <= listed(w.owner)
    assert "mx" in listed(w.reader) and "mxb" not in listed(w.reader)
    assert not {"mx", "mxb", "mxns"} & listed(w.stranger)  # the same answer as for no policy
    assert w.call("GET", "/v1/read/policies").status == 403
    # a read request of another route is not a list request; one served is not served again
    answer = w.call("GET", "/v1/read/policies", headers=header(read_doc(w, "mx", w.owner)))
    assert answer.status == 403 and "is for show, not list" in answer.error()[1], answer.body
    served = header(read_doc(w, "", w.owner, route="list"))
    assert w.call("GET", "/v1/read/policies", headers=served).status == 200
    again = w.call("GET", "/v1/read/policies", headers=served)
    assert again.status == 403 and "served before" in again.error()[1], again.body
    # signed for another CAS
    other = w.call(
        "GET", "/v1/read/policies", headers=header(read_doc(w, "", w.owner, route="list", cas="00" * 32))
    )
    assert other.status in (400, 403) and other.error()[0] in ("ParseError", "AccessDeniedError"), other.body


def check_policy_crl(w: World) -> None:
    answer = w.call("GET", "/v1/policies/mx/crl/ca", headers=header(read_doc(w, "mx", w.reader, route="crl")))
    assert answer.status == 200 and answer.headers["content-type"] == "application/pkix-crl"
    assert answer.headers["cache-control"] == "private, no-store"
    for who in (w.updater, w.board[0], w.stranger):
        refused = [
            w.call(
                "GET", f"/v1/policies/{name}/crl/{ca}", headers=header(read_doc(w, name, who, route="crl"))
            )
            for name, ca in (("mx", "ca"), ("mx", "nosuch"), ("mx", "token"))
        ]
        missing = w.call(
            "GET", "/v1/policies/mx-none/crl/ca", headers=header(read_doc(w, "mx-none", who, route="crl"))
        )
        for r in refused:
            assert r.status == 403
        assert refused[0].error()[1].replace("mx/ca", "X") == missing.error()[1].replace("mx-none/ca", "X")
    # Without a signature: only an export_public CA's, and the same refusal otherwise.
    anonymous = [w.call("GET", f"/v1/policies/{p}/crl/ca") for p in ("mx", "mx-none")]
    assert [a.status for a in anonymous] == [403, 403]
    assert anonymous[0].error()[1].replace("mx/ca", "X") == anonymous[1].error()[1].replace("mx-none/ca", "X")
    answer = w.call("GET", "/v1/policies/mx/crl/ca", headers=header(read_doc(w, "mxb", w.owner, route="crl")))
    assert answer.status == 400
    check_bound_reads(w, "/v1/policies/{}/crl/ca", "crl")


def check_submit(w: World) -> None:
    # The owner and the updater update at once; a board member's update waits for the board.
    for who in (w.owner, w.updater):
        answer = w.submit(
            policy_text("mx", _access(["CREATOR", w.reader.fingerprint],
                                      f"[CREATOR, {w.updater.fingerprint}]"),
                        w.hashes["mx"], extra=f"  - name: by_{who.fingerprint[:8]}\n    kind: ascii\n"),
            who,
        )  # fmt: skip
        assert answer.status == 200 and answer.json()["state"] == "active", answer.body
        w.hashes["mx"] = answer.json()["hash"]
    answer = w.submit(policy_text("mxb", _access(["CREATOR"], "NONE"), w.hashes["mxb"]), w.board[0])
    assert answer.status == 200 and answer.json()["state"] == "pending"
    w.hashes["mxb-pending"] = answer.json()["hash"]
    # The owner of mxb is not on its board; a reader, a board member of another policy and a
    # stranger may not update mx. Each gets the refusal of a name in a namespace it may not
    # create in, whether or not the name exists (and never the current hash).
    answer = w.submit(policy_text("mxb", "", w.hashes["mxb"]), w.owner)
    assert answer.status == 403 and w.hashes["mxb"] not in answer.body.decode()
    for who in (w.reader, w.board[0], w.stranger):
        for pred in (None, "00" * 32, w.hashes["mx"]):
            answer = w.submit(policy_text("mx", "", pred), who)
            assert answer.status == 403 and answer.error()[0] == "AccessDeniedError"
            assert w.hashes["mx"] not in answer.body.decode()
        same_refusal(
            w,
            w.submit(policy_text("mxns/exists", ""), who),
            w.submit(policy_text("mxns/absent", ""), who),
            "mxns/exists", "mxns/absent",
        )  # fmt: skip
        same_refusal(
            w,
            w.submit(policy_text("mxns/exists", "", w.hashes["mxns/exists"]), who),
            w.submit(policy_text("mxns/absent", "", w.hashes["mxns/exists"]), who),
            "mxns/exists", "mxns/absent",
        )  # fmt: skip

    # Submissions signed for another CAS (docs/cas.md "Policies and governance"), by identities
    # this CAS would take them from: a creation of a free name, an update under a plain update
    # list, a child in a namespace, a board member's voice. Each is refused before any policy is
    # looked at, with one answer whether the name exists or not, and changes nothing: no
    # version, no ledger entry (mx's events are as they were; the free name is still free).
    def mx_events() -> int:
        read = header(read_doc(w, "mx", w.owner, route="events"))
        return len(w.call("GET", "/v1/policies/mx/events", headers=read).json()["events"])

    before = mx_events()
    free = policy_text("mx-free", _access(["CREATOR"], "[CREATOR]"))
    elsewhere = [
        w.submit(free, w.owner, cas=OTHER_CAS),
        w.submit(policy_text("mx", "", w.hashes["mx"]), w.updater, cas=OTHER_CAS),
        w.submit(policy_text("mx", "", "00" * 32), w.updater, cas=OTHER_CAS),
        w.submit(policy_text("mxns/child", ""), w.owner, cas=OTHER_CAS),
        w.submit(policy_text("mxb", "", w.hashes["mxb"]), w.board[1], cas=OTHER_CAS),
    ]
    assert {a.status for a in elsewhere} == {403}
    assert len({a.error() for a in elsewhere}) == 1, [a.error() for a in elsewhere]
    assert elsewhere[0].error()[0] == "AccessDeniedError" and "another CAS" in elsewhere[0].error()[1]
    assert mx_events() == before
    # The former confide/policy/v1 (no cas) and a v2 submission without cas are malformed.
    policy_json = w.submission(free, w.owner)["policy"]
    for doc in (
        signed({"type": POLICY_V1_TYPE, "policy": policy_json}, w.owner),
        signed({"type": POLICY_TYPE, "policy": policy_json}, w.owner),
    ):
        answer = w.call("POST", "/v1/policies", doc)
        assert answer.status == 400 and answer.error()[0] == "ParseError", answer.body
    assert "names no CAS" in w.call("POST", "/v1/policies", signed(
        {"type": POLICY_V1_TYPE, "policy": policy_json}, w.owner)).error()[1]  # fmt: skip
    assert mx_events() == before
    answer = w.submit(free, w.owner)  # for this CAS: the name was free
    assert answer.status == 200 and answer.json()["state"] == "active"
    # No signature, a forged one, another endpoint's type.
    unsigned = {"type": POLICY_TYPE, "policy": json.loads(json.dumps(
        {"name": "mx", "version": "0.3", "predecessor": w.hashes["mx"]}))}  # fmt: skip
    assert w.call("POST", "/v1/policies", unsigned).status == 400
    sub = w.submission(policy_text("mx", "", w.hashes["mx"]), w.owner)
    sub["policy"]["access_policy"] = {"read": ["ANY"]}
    assert w.call("POST", "/v1/policies", sub).status == 403  # the signature no longer verifies
    approval = signed({"type": APPROVAL_TYPE, "name": "mx", "hash": w.hashes["mx"], "cas": w.spki}, w.owner)
    assert w.call("POST", "/v1/policies", approval).status == 400
    # A replayed submission: the same signed update again is a conflict, and changes nothing.
    text = policy_text(
        "mxns/exists",
        _access(["CREATOR"], "[CREATOR]"),
        w.hashes["mxns/exists"],
        "  - name: more\n    kind: ascii\n",
    )
    first = w.submission(text, w.owner)
    assert w.call("POST", "/v1/policies", first).status == 200
    again = w.call("POST", "/v1/policies", first)
    assert again.status == 409 and again.error()[0] == "ConflictError"


def check_approve(w: World) -> None:
    def approve(
        name: str, digest: str, who: Identity, url_name: str | None = None, cas: str | None = None
    ) -> Answer:
        doc = signed(
            {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": w.spki if cas is None else cas}, who
        )
        return w.call("POST", f"/v1/policies/{url_name or name}/approvals", doc)

    if "mxb-pending" not in w.hashes:
        check_submit(w)
    digest = w.hashes["mxb-pending"]
    # Not on the board (the owner included): the same refusal whether the version or the
    # policy exists or not.
    for who in (w.owner, w.reader, w.stranger):
        answers = [
            approve("mxb", digest, who),
            approve("mxb", "00" * 32, who),
            approve("mxb-none", digest, who),
        ]
        assert {a.status for a in answers} == {403}
        texts = {
            a.error()[1].replace("mxb-none", "mxb").replace("0000000000000000", digest[:16]) for a in answers
        }
        assert len(texts) == 1
    # A read document as an approval; an approval naming another policy than the URL.
    assert w.call("POST", "/v1/policies/mxb/approvals", read_doc(w, "mxb", w.board[1])).status == 400
    assert approve("mx", digest, w.board[1], url_name="mxb").status == 400
    # A board member's approval for another CAS (docs/cas.md "Policies and governance"): the same
    # refusal whether the version or the policy exists, before either is looked at; the former
    # confide/approval/v1, which names no CAS, is malformed. Neither counts.
    answers = [
        approve("mxb", digest, w.board[1], cas=OTHER_CAS),
        approve("mxb", "00" * 32, w.board[1], cas=OTHER_CAS),
        approve("mxb-none", digest, w.board[1], cas=OTHER_CAS),
    ]
    assert {a.status for a in answers} == {403}
    assert len({a.error()[1] for a in answers}) == 1 and "another CAS" in answers[0].error()[1]
    v1 = signed({"type": "confide/approval/v1", "name": "mxb", "hash": digest}, w.board[1])
    answer = w.call("POST", "/v1/policies/mxb/approvals", v1)
    assert answer.status == 400 and answer.error()[0] == "ParseError" and "names no CAS" in answer.error()[1]
    # The board's second member completes it. The new version's update rules are NONE (the
    # board removed itself): the same approval replayed, by a signer no longer on any board of
    # mxb, is refused as a stranger's, and changes nothing.
    doc = signed({"type": APPROVAL_TYPE, "name": "mxb", "hash": digest, "cas": w.spki}, w.board[1])
    answer = w.call("POST", "/v1/policies/mxb/approvals", doc)
    assert answer.status == 200 and answer.json()["state"] == "active"
    w.hashes["mxb"] = digest
    for replayed in (w.call("POST", "/v1/policies/mxb/approvals", doc), approve("mxb", digest, w.board[0])):
        assert replayed.status == 403 and replayed.error()[0] == "AccessDeniedError"


def check_revoke(w: World) -> None:
    # The owner may; the reader, the board member of another policy and a stranger may not,
    # with one refusal whether the policy exists or not.
    for who in (w.reader, w.board[0], w.stranger):
        existing = w.call("POST", "/v1/policies/mx/revocations", revoke_doc(w, "mx", who))
        missing = w.call("POST", "/v1/policies/mx-none/revocations", revoke_doc(w, "mx-none", who))
        same_refusal(w, existing, missing, "mx", "mx-none")

    # Nor does the ledger's size: a refusal is recorded for a missing policy too (under no
    # policy), so between two refusals for mx (seen by mx's reader with their ledger indices),
    # a refusal for a missing policy took one index.
    def last_refusal() -> int:
        events = w.call(
            "GET", "/v1/policies/mx/events", headers=header(read_doc(w, "mx", w.reader, route="events"))
        ).json()
        return max(e["seq"] for e in events["events"] if e["type"] == "revocation-refused")

    assert w.call("POST", "/v1/policies/mx/revocations", revoke_doc(w, "mx", w.stranger)).status == 403
    first = last_refusal()
    assert (
        w.call("POST", "/v1/policies/mx-none/revocations", revoke_doc(w, "mx-none", w.stranger)).status == 403
    )
    assert w.call("POST", "/v1/policies/mx/revocations", revoke_doc(w, "mx", w.stranger)).status == 403
    assert last_refusal() == first + 2
    # Another endpoint's documents, a request for another policy, expired and future-dated.
    assert w.call("POST", "/v1/policies/mx/revocations", read_doc(w, "mx", w.owner)).status == 400
    assert w.call("POST", "/v1/policies/mxb/revocations", revoke_doc(w, "mx", w.owner)).status == 400
    for at in (int(time.time()) - READ_WINDOW - 60, int(time.time()) + READ_WINDOW + 60):
        answer = w.call("POST", "/v1/policies/mx/revocations", revoke_doc(w, "mx", w.owner, at=at))
        assert answer.status == 403 and "from the CAS clock" in answer.error()[1]
    # The owner's request for another CAS: refused before any policy is looked at (one answer
    # for mx and a missing policy), not recorded and not carried out; the former
    # confide/revoke/v1, which names no CAS, is malformed.
    refused = last_refusal()
    elsewhere = [
        w.call("POST", f"/v1/policies/{n}/revocations", revoke_doc(w, n, w.owner, cas=OTHER_CAS))
        for n in ("mx", "mx-none")
    ]
    same_refusal(w, elsewhere[0], elsewhere[1], "mx", "mx-none")
    assert "another CAS" in elsewhere[0].error()[1]
    v1 = {k: v for k, v in revoke_doc(w, "mx", w.owner).items() if k not in ("cas", "signature", "signer")}
    answer = w.call("POST", "/v1/policies/mx/revocations", signed({**v1, "type": REVOKE_V1_TYPE}, w.owner))
    assert answer.status == 400 and answer.error()[0] == "ParseError" and "names no CAS" in answer.error()[1]
    assert last_refusal() == refused
    doc = revoke_doc(w, "mx", w.owner)
    answer = w.call("POST", "/v1/policies/mx/revocations", doc)
    assert answer.status == 200, answer.body
    again = w.call("POST", "/v1/policies/mx/revocations", doc)  # replayed: carried out once
    assert again.status == 409 and again.error()[0] == "ConflictError"


def check_public_get(path: str, *, statuses: tuple[int, ...] = (200,)) -> Callable[[World], None]:
    """A route for anyone: no signature needed, and what it answers names no policy."""

    def check(w: World) -> None:
        answer = w.call("GET", path)
        assert answer.status in statuses, (path, answer.status, answer.body[:200])
        for name in ("mxns/exists", '"mx"', "mx-none"):
            assert name.encode() not in answer.body, (path, name)
        # "mxb" as a name, not three letters inside a base64 run: the CAS's evidence and log key
        # are random base64, where "mxb" turns up in about one answer of every few hundred.
        assert not re.search(rb"(?<![A-Za-z0-9+/])mxb(?![A-Za-z0-9+/=])", answer.body), path

    return check


def check_metrics(w: World) -> None:
    # Every refused and allowed request above (policy names in their paths) has been counted:
    # the labels are route templates, never a name, and nothing is counted per identity.
    check_show(w)
    body = w.call("GET", "/metrics").body.decode()
    assert 'route="/v1/policies/{name:path}"' in body
    for needle in ("mxns", "mxb", "/mx", "mx-none", w.owner.fingerprint[:16], w.stranger.fingerprint[:16]):
        assert needle not in body, needle


def check_unsigned_post(path: str, statuses: tuple[int, ...]) -> Callable[[World], None]:
    """A POST whose body is a signed document of its own kind (or evidence): a stranger's
    approval-shaped or empty body is refused, never a 2xx."""

    def check(w: World) -> None:
        for body in (
            {},
            signed({"type": APPROVAL_TYPE, "name": "mx", "hash": w.hashes["mx"], "cas": w.spki}, w.stranger),
        ):
            answer = w.call("POST", path, body)
            assert answer.status in statuses, (path, answer.status, answer.body[:200])

    return check


def check_volume_tag(w: World) -> None:
    body = {"policy": "mx", "volume": "v", "session": "00" * 32, "old_tag": "00" * 32, "new_tag": "11" * 32}
    answer = w.call("POST", "/v1/volumes/tag", body)
    assert answer.status == 403 and answer.error()[0] == "AccessDeniedError"
    missing = w.call("POST", "/v1/volumes/tag", {**body, "policy": "mx-none"})
    assert missing.error()[1] == answer.error()[1]


def check_ocsp(w: World) -> None:
    for method in ("GET", "POST"):
        answer = w.call(method, "/v1/ocsp/" + "0" * 40 + ("/MAo=" if method == "GET" else ""))
        assert answer.status in (400, 404), (method, answer.status)


def check_read_nonce(w: World) -> None:
    """A read nonce, to anyone, for any name (nothing is looked up: it says nothing of the
    policy); it grants nothing but one try at a signed read of that policy on that route within
    its minute. A body without exactly a name and a route is malformed."""
    answers = [w.call("POST", READ_NONCE_PATH, {"name": n, "route": "show"}) for n in ("mx", "mx-none")]
    assert [a.status for a in answers] == [200, 200]
    assert [set(a.json()) for a in answers] == [{"nonce", "expires_in"}] * 2
    assert answers[0].json()["expires_in"] == answers[1].json()["expires_in"] == 60
    for body in ({}, {"name": "mx"}, {"name": "mx", "route": "all"}, {"name": "mx", "route": "show", "x": 1}):
        answer = w.call("POST", READ_NONCE_PATH, body)
        assert answer.status == 400 and answer.error()[0] == "ParseError", (body, answer.body)


def check_nonce(path: str) -> Callable[[World], None]:
    """A nonce, to anyone: it grants nothing but a try at attesting within its minute."""

    def check(w: World) -> None:
        answer = w.call("POST", path)
        assert answer.status == 200 and set(answer.json()) == {"nonce", "expires_in"}

    return check


MATRIX: dict[tuple[str, str], Callable[[World], None]] = {
    ("GET", "/v1/health"): check_public_get("/v1/health"),
    ("GET", "/v1/ready"): check_public_get("/v1/ready"),
    ("GET", "/v1/cas/evidence"): check_public_get("/v1/cas/evidence"),
    ("POST", "/v1/policies"): check_submit,
    ("POST", "/v1/policies/{name}/approvals"): check_approve,
    ("POST", "/v1/policies/{name}/revocations"): check_revoke,
    ("GET", "/v1/policies/{name}/events"): check_events,
    ("GET", "/v1/policies/{name}/crl/{secret}"): check_policy_crl,
    ("GET", "/v1/crl/{file}"): check_public_get("/v1/crl/" + "0" * 40 + ".crl", statuses=(404,)),
    ("GET", "/v1/ca/{file}"): check_public_get("/v1/ca/" + "0" * 40 + ".crt", statuses=(404,)),
    ("GET", "/v1/ocsp/{rest}"): check_ocsp,
    ("HEAD", "/v1/ocsp/{rest}"): check_ocsp,
    ("POST", "/v1/ocsp/{rest}"): check_ocsp,
    ("GET", "/v1/policies/{name}"): check_show,
    ("GET", "/v1/log/{path}"): check_public_get("/v1/log/checkpoint", statuses=(200, 404)),
    ("POST", "/v1/attest/nonce"): check_nonce("/v1/attest/nonce"),
    ("POST", READ_NONCE_PATH): check_read_nonce,
    ("POST", "/v1/attest"): check_unsigned_post("/v1/attest", (400, 403, 422)),
    # A --dev CAS releases its master key to no one and hands over to no successor (400).
    ("POST", "/v1/cas/key-release/nonce"): check_nonce("/v1/cas/key-release/nonce"),
    ("POST", "/v1/cas/key-release"): check_unsigned_post("/v1/cas/key-release", (400,)),
    ("GET", "/v1/cas/successor"): check_public_get("/v1/cas/successor", statuses=(400,)),
    ("POST", "/v1/cas/successor/approvals"): check_unsigned_post("/v1/cas/successor/approvals", (400,)),
    ("POST", "/v1/cas/successor/withdrawals"): check_unsigned_post("/v1/cas/successor/withdrawals", (400,)),
    ("GET", "/v1/cas/successor/board"): check_public_get("/v1/cas/successor/board", statuses=(400,)),
    ("POST", "/v1/cas/successor/board/approvals"): check_unsigned_post(
        "/v1/cas/successor/board/approvals", (400,)
    ),
    ("GET", "/v1/cas/successor/retirements"): check_public_get(
        "/v1/cas/successor/retirements", statuses=(400,)
    ),
    ("POST", "/v1/cas/successor/retirements/approvals"): check_unsigned_post(
        "/v1/cas/successor/retirements/approvals", (400,)
    ),
    ("POST", "/v1/volumes/tag"): check_volume_tag,
    ("GET", "/metrics"): check_metrics,
    ("GET", "/v1/read/policies"): check_read_policies,
}


def test_every_route_has_an_entry(world: World) -> None:
    schema = world.call("GET", "/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert routes == set(MATRIX), (sorted(routes - set(MATRIX)), sorted(set(MATRIX) - routes))
    # The schema itself is the same for everyone and names no policy.
    for name in ("mxns", "mxb", '"mx"'):
        assert name.encode() not in world.call("GET", "/openapi.json").body


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
def test_route(world: World, route: tuple[str, str]) -> None:
    MATRIX[route](world)


def test_a_removed_reader_keeps_nothing_of_an_old_request(world: World) -> None:
    """Who may read is decided at each request, and each request is served once: a reader's
    request signed while it was listed, but not sent until it was removed, is refused; one
    sent while listed cannot be sent again (after an update, say) to read the new version."""
    w = world
    name = "mx-removal"
    first = w.submit(policy_text(name, _access(["CREATOR", w.reader.fingerprint], "[CREATOR]")), w.owner)
    digest = first.json()["hash"]
    old = header(read_doc(w, name, w.reader))
    # Signed for each route while the reader was listed (and accepted there: checked below).
    olds = {route: header(read_doc(w, name, w.reader, route=route)) for route in ("events", "crl")}
    kept = {route: header(read_doc(w, name, w.reader, route=route)) for route in ("show", "events", "crl")}
    assert w.call("GET", f"/v1/policies/{name}", headers=old).json()["hash"] == digest
    assert w.call("GET", f"/v1/policies/{name}/events", headers=olds["events"]).status == 200
    assert w.call("GET", f"/v1/policies/{name}/crl/ca", headers=olds["crl"]).status == 200
    second = w.submit(
        policy_text(
            name,
            _access(["CREATOR", w.reader.fingerprint], "[CREATOR]"),
            digest,
            "  - name: more\n    kind: ascii\n",
        ),
        w.owner,
    )
    digest = second.json()["hash"]
    replayed = w.call("GET", f"/v1/policies/{name}", headers=old)  # served once: not the new version
    assert replayed.status == 403 and "served before" in replayed.error()[1]
    assert digest not in replayed.body.decode()
    third = w.submit(policy_text(name, _access(["CREATOR"], "[CREATOR]"), digest), w.owner)
    assert third.status == 200
    for path, sent in (
        (f"/v1/policies/{name}", kept["show"]),
        (f"/v1/policies/{name}/events", kept["events"]),
        (f"/v1/policies/{name}/crl/ca", kept["crl"]),
        (f"/v1/policies/{name}/events", olds["events"]),
        (f"/v1/policies/{name}/crl/ca", olds["crl"]),
    ):
        answer = w.call("GET", path, headers=sent)
        assert answer.status == 403 and answer.error()[0] == "AccessDeniedError", path
        assert digest not in answer.body.decode()
