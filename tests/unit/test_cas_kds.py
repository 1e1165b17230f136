"""The CAS fetches the VCEK of SEV-SNP evidence sent without one from AMD KDS (``cas serve
--kds``, :mod:`confide.cas.kds`): here a fake KDS on 127.0.0.1 (a real HTTP server that counts
requests) serving a test AMD PKI, whose roots the in-process CAS is given (as the other SEV-SNP
CAS tests do). ``tests/integration/test_cas_kds_cli.py`` runs ``cas serve --kds`` for real, under
the pinned AMD roots."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from snp_fakes import AT as SNP_AT
from snp_fakes import FakeAmd, cert_table, make_fake_amd

from asgi_call import call
from cas_inproc import Clock, RuntimeKey, evict_before_phase_one, last_attestation, production_cas, refused
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.kds import KdsVcekCache, vek_request
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier, Prefetched
from confide.collateral.amd_kds import AmdCollateral, AmdCollateralRequest, KdsHttpCollateral
from confide.evidence.sev_snp import Product
from confide.evidence.snp_certs import VCEK_GUID, VLEK_GUID
from confide.verify.result import Platform
from confide.verify.sev_snp import VekKind
from kds_fake import FakeKds, fake_kds

AMD = make_fake_amd(Product.MILAN)
MEASUREMENT = "cd" * 48  # snp_fakes' report measurement
NOW = datetime(2025, 6, 1, tzinfo=UTC)
CRL = AMD.crl(next_update=NOW + timedelta(days=30))
V2_REPORT = (Path(__file__).parent.parent / "assets/sev-snp/google-go-sev-guest/attestation.bin").read_bytes()

POLICY = f"""name: app
version: "0.3"
services:
  - name: snp
    command: snp --token $$SCONE::token$$
    attestation:
      sev-snp:
        measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
"""


@pytest.fixture
def kds() -> Iterator[FakeKds]:
    with fake_kds() as server:
        yield server


def kds_cas(data_dir: Path, url: str | None) -> Cas:
    """A production CAS (no --dev) verifying SEV-SNP under the test PKI, with ``--kds url`` (as
    ``cas serve`` builds it: no cache in the source, ``data_dir/kds-cache``); a CAS already in
    ``data_dir`` is started again (nothing in memory)."""
    verifier = PlatformVerifier(
        amd_roots=AMD.roots(),
        kds=KdsHttpCollateral(None, base_url=url, timeout=5, crl_required=False) if url else None,
        kds_cache=data_dir / "kds-cache",
        kds_where=f"AMD KDS {url}",
    )
    if (data_dir / "cas.db").exists():
        cas, *_ = prepare(data_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None)
        cas.verifier = verifier
    else:
        cas = production_cas(data_dir, verifier, POLICY)
    cas.clock = Clock(NOW.timestamp())
    return cas


def snp_request(cas: Cas, amd: FakeAmd = AMD, aux: dict[str, bytes] | None = None, **changes: Any) -> Any:
    rt = RuntimeKey(cas)
    evidence = amd.sign(amd.report(report_data=rt.binding, **changes))
    return rt, rt.body(policy="app", service="snp", platform="sev-snp", evidence=evidence, aux=aux)


def accepted(cas: Cas, amd: FakeAmd = AMD, **kw: Any) -> dict[str, Any]:
    rt, body = snp_request(cas, amd, **kw)
    config = rt.open(cas.attest(body))
    assert config["command"][0] == "snp" and len(config["command"][2]) > 0
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["measurement"] == MEASUREMENT
    return event


def vek_file(cas_dir: Path, amd: FakeAmd = AMD) -> Path:
    files = list((cas_dir / "kds-cache").rglob("*.der"))
    names = [f for f in files if f.parent.name == amd.chip_id.hex()]
    assert len(names) == 1, files
    return names[0]


def test_fetched_then_from_memory_then_from_disk(kds: FakeKds, tmp_path: Path) -> None:
    vcek_path = kds.serve_amd(AMD, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    assert accepted(cas)["vcek_source"] == "kds"  # the ledger says where the VCEK came from
    assert kds.requests == [vcek_path, "/vcek/v1/Milan/cert_chain", "/vcek/v1/Milan/crl"]
    accepted(cas)
    assert len(kds.requests) == 3  # the second attestation is served from memory
    assert vek_file(tmp_path / "cas").read_bytes() == AMD.vek.public_bytes(serialization.Encoding.DER)
    # A restarted CAS (new verifier, same data directory) reads the verified disk cache.
    again = kds_cas(tmp_path / "cas", kds.url)
    accepted(again)
    assert len(kds.requests) == 3


def test_the_kds_crl_is_checked(kds: FakeKds, tmp_path: Path) -> None:
    kds.serve_amd(AMD, crl=AMD.crl(revoked_serials=(AMD.ask.serial_number,)))
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, body = snp_request(cas)
    refused(cas, body, errors.RevocationError, "revoked")
    assert not list((tmp_path / "cas" / "kds-cache").rglob("*.der"))  # not kept


def test_a_due_crl_is_fetched_again(kds: FakeKds, tmp_path: Path) -> None:
    kds.serve_amd(AMD, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    accepted(cas)
    kds.serve_amd(AMD, crl=AMD.crl(this_update=NOW, next_update=NOW + timedelta(days=90)))
    cas.clock = Clock((NOW + timedelta(days=31)).timestamp())
    accepted(cas)
    assert len(kds.requests) == 6 and kds.requests[-1] == "/vcek/v1/Milan/crl"


def test_a_kds_without_a_crl_is_used_without_one(kds: FakeKds, tmp_path: Path) -> None:
    """A mirror that answers 404 for the CRL: verified without it (the VCEK still chains to the
    pinned ARK); the CRL is asked for again after an hour, and on every start."""
    kds.serve_amd(AMD)
    cas = kds_cas(tmp_path / "cas", kds.url)
    accepted(cas)
    accepted(cas)
    assert len(kds.requests) == 3
    cas.clock = Clock((NOW + timedelta(hours=2)).timestamp())
    accepted(cas)
    assert len(kds.requests) == 6


@pytest.mark.parametrize(
    ("status", "body", "headers", "match"),
    [
        (404, b"Not Found", {}, "HTTP 404"),
        (429, b"slow down", {"Retry-After": "30"}, "HTTP 429, expected 200 \\(retry after 30 s\\)"),
        (503, b"", {}, "HTTP 503"),
        (200, b"<html>maintenance</html>", {}, "ParseError: VCEK from AMD KDS: not a DER or PEM"),
    ],
)
def test_kds_failures_are_recorded_collateral_refusals(
    kds: FakeKds, tmp_path: Path, status: int, body: bytes, headers: dict[str, str], match: str
) -> None:
    vcek_path = kds.serve_amd(AMD, crl=CRL)
    kds.route(vcek_path, body, status, headers)
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, req = snp_request(cas)
    exc = refused(
        cas, req, errors.CollateralMissingError, f"fetching it from AMD KDS {kds.url} failed: .*{match}"
    )
    assert exc.exit_code == 25
    assert not list((tmp_path / "cas" / "kds-cache").rglob("*.der"))


def test_an_unreachable_kds_is_a_collateral_refusal_and_is_retried(
    kds: FakeKds, tmp_path: Path, refused_port: int
) -> None:
    cas = kds_cas(tmp_path / "cas", f"http://127.0.0.1:{refused_port}")
    _rt, req = snp_request(cas)
    refused(cas, req, errors.CollateralMissingError, "ConnectError")
    # The next attestation asks again (no negative caching across attestations).
    kds.serve_amd(AMD, crl=CRL)
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.kds is not None
    source = verifier.kds.source
    assert isinstance(source, KdsHttpCollateral)
    verifier.kds.source = KdsHttpCollateral(None, base_url=kds.url, crl_required=False)
    accepted(cas)
    assert verifier.kds.fetches == 2


def tamper_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 1  # in the signature
    path.write_bytes(bytes(data))


def tamper_other_chip(path: Path) -> None:
    """A genuine VCEK of the same (test) AMD PKI, but for another chip."""
    other = make_fake_amd(Product.MILAN, chip_id=bytes(range(2, 66)))
    path.write_bytes(other.vek.public_bytes(serialization.Encoding.DER))


def tamper_chain(path: Path) -> None:
    """The chain replaced by one under another ARK (not the pinned one)."""
    rogue = make_fake_amd(Product.MILAN)
    (path.parents[1] / "cert_chain.pem").write_bytes(rogue.chain_pem())


def tamper_garbage(path: Path) -> None:
    path.write_bytes(b"\x30\x82" + bytes(5000))


@pytest.mark.parametrize("tamper", [tamper_flip, tamper_other_chip, tamper_chain, tamper_garbage])
def test_a_tampered_cache_is_not_used_but_fetched_again(kds: FakeKds, tmp_path: Path, tamper: Any) -> None:
    kds.serve_amd(AMD, crl=CRL)
    accepted(kds_cas(tmp_path / "cas", kds.url))
    path = vek_file(tmp_path / "cas")
    tamper(path)
    cas = kds_cas(tmp_path / "cas", kds.url)  # a restart: nothing in memory
    accepted(cas)
    assert len(kds.requests) == 6  # fetched again
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.kds is not None
    assert verifier.kds.rejected_files == 1
    assert path.read_bytes() == AMD.vek.public_bytes(serialization.Encoding.DER)  # repaired


def test_a_tampered_cache_with_the_kds_down_is_refused(kds: FakeKds, tmp_path: Path) -> None:
    kds.serve_amd(AMD, crl=CRL)
    accepted(kds_cas(tmp_path / "cas", kds.url))
    tamper_other_chip(vek_file(tmp_path / "cas"))
    kds.routes.clear()  # the KDS now answers 404 to everything
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, req = snp_request(cas)
    refused(cas, req, errors.CollateralMissingError, "HTTP 404")


def test_a_kds_serving_another_vcek_is_refused(kds: FakeKds, tmp_path: Path) -> None:
    """The KDS (a mirror) answers with a genuine VCEK of another chip: refused before any report
    is looked at, and not cached."""
    vcek_path = kds.serve_amd(AMD, crl=CRL)
    other = make_fake_amd(Product.MILAN, chip_id=bytes(range(2, 66)))
    kds.route(vcek_path, other.vek.public_bytes(serialization.Encoding.DER))
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, req = snp_request(cas)
    refused(cas, req, errors.CertificateChainError, "got a VCEK for another chip")
    assert not list((tmp_path / "cas" / "kds-cache").rglob("*.der"))


def test_a_kds_chain_under_another_ark_is_refused(kds: FakeKds, tmp_path: Path) -> None:
    """Only the roots the CAS pins are trusted: a KDS chain (and VCEK) under another ARK is not."""
    rogue = make_fake_amd(Product.MILAN)  # the same keys, but its ARK certificate is not pinned
    kds.serve_amd(rogue, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, req = snp_request(cas)
    refused(cas, req, errors.CertificateChainError, "is not a pinned AMD root")


@pytest.mark.parametrize("how", ["vcek", "auxblob"])
def test_a_sent_vcek_is_used_and_nothing_is_fetched(kds: FakeKds, tmp_path: Path, how: str) -> None:
    kds.serve_amd(AMD, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    der = AMD.vek.public_bytes(serialization.Encoding.DER)
    aux = {"vcek": der} if how == "vcek" else {"auxblob": cert_table([(VCEK_GUID, der)])}
    assert accepted(cas, aux=aux)["vcek_source"] == "sent"
    assert kds.requests == []
    _rt, body = snp_request(cas, aux=aux)
    assert cas.collateral_job(body) is None


def test_a_masked_chip_id_is_refused_without_asking(kds: FakeKds, tmp_path: Path) -> None:
    kds.serve_amd(AMD, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, req = snp_request(cas, chip_id=bytes(64))
    refused(cas, req, errors.CollateralMissingError, "CHIP_ID is masked")
    assert kds.requests == []


def test_a_vlek_report_is_refused_without_asking(kds: FakeKds, tmp_path: Path) -> None:
    vlek = make_fake_amd(Product.MILAN, VekKind.VLEK)
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, req = snp_request(cas, vlek)
    refused(cas, req, errors.CollateralMissingError, "does not serve VLEKs")
    assert kds.requests == []


def test_a_v2_report_is_refused_without_asking(kds: FakeKds, tmp_path: Path) -> None:
    cas = kds_cas(tmp_path / "cas", kds.url)
    rt = RuntimeKey(cas)
    req = rt.body(policy="app", service="snp", platform="sev-snp", evidence=V2_REPORT)
    refused(cas, req, errors.CollateralMissingError, "v2 report does not name its product")
    assert kds.requests == []


def test_without_kds_the_refusal_names_the_option(tmp_path: Path) -> None:
    cas = kds_cas(tmp_path / "cas", None)
    _rt, req = snp_request(cas)
    refused(cas, req, errors.CollateralMissingError, "start it with --kds URL")
    assert cas.collateral_job(req) is None


def test_the_http_route_fetches_in_a_worker_thread(kds: FakeKds, tmp_path: Path) -> None:
    """Through the ASGI app (the attestation fast path): the fetch runs in a thread of its own
    before phase 1, which then finds the VCEK in memory; the refusal of a failed fetch is a 403
    with the error class, not a 500."""
    kds.serve_amd(AMD, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.kds is not None
    source = verifier.kds.source
    threads: list[str] = []

    class Recording:
        def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
            threads.append(threading.current_thread().name)
            return source.fetch(request)

    verifier.kds.source = Recording()
    app = create_app(cas)
    rt, body = snp_request(cas)
    status, out = call(app, "/v1/attest", [json.dumps(body).encode()])
    assert status == 200, out
    assert rt.open(json.loads(out))["command"][0] == "snp"
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
    # A failed fetch: a recorded refusal, HTTP 403, class and exit code.
    kds.routes.clear()
    _rt, other_chip = snp_request(cas, make_fake_amd(Product.MILAN, chip_id=bytes(range(3, 67))))
    status, out = call(app, "/v1/attest", [json.dumps(other_chip).encode()])
    assert status == 403
    error = json.loads(out)["error"]
    assert error["class"] == "CollateralMissingError" and error["exit_code"] == 25
    assert last_attestation(cas)["reason_class"] == "CollateralMissingError"
    assert len(threads) == 2 and threads[1] != threading.main_thread().name
    # /metrics counts both fetches by their outcome, and their durations.
    status, text = call(app, "/metrics", [b""], method="GET")
    assert status == 200
    metrics = text.decode()
    assert 'confide_cas_collateral_fetches_total{outcome="ok",source="kds"} 1.0' in metrics
    assert 'confide_cas_collateral_fetches_total{outcome="error",source="kds"} 1.0' in metrics
    assert 'confide_cas_collateral_fetch_seconds_count{source="kds"} 2.0' in metrics


@pytest.mark.parametrize("up", [True, False])
def test_phase_one_uses_its_prefetch_when_the_vcek_left_memory(
    kds: FakeKds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, up: bool
) -> None:
    """Through the ASGI app: the VCEK (or the failure record) leaves memory (and disk) after
    the prefetch, before phase 1. Phase 1 takes the prefetch's outcome: no fetch on the event
    loop, and the verdict of an attestation without the eviction."""
    if up:
        kds.serve_amd(AMD, crl=CRL)
    verdicts = []
    for name, evicting in (("plain", False), ("evicted", True)):
        cas = kds_cas(tmp_path / name, kds.url)
        verifier = cas.verifier
        assert isinstance(verifier, PlatformVerifier) and verifier.kds is not None
        cache, source, threads = verifier.kds, verifier.kds.source, []

        class Recording:
            def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
                threads.append(threading.current_thread().name)
                return source.fetch(request)

        cache.source = Recording()

        def evict(cache: KdsVcekCache = cache, data: Path = tmp_path / name) -> None:
            cache.memory.clear()
            for der in (data / "kds-cache").rglob("*.der"):
                der.unlink()

        ran = evict_before_phase_one(cas, monkeypatch, evict) if evicting else []
        status, _out = call(create_app(cas), "/v1/attest", [json.dumps(snp_request(cas)[1]).encode()])
        assert threads and threading.main_thread().name not in threads
        assert len(threads) == 1 and ran == ([1] if evicting else [])
        event = last_attestation(cas)
        verdicts.append((status, event["verdict"], event.get("reason_class"), event.get("vcek_source")))
    assert verdicts[0] == verdicts[1]
    assert verdicts[0][:2] == ((200, "accepted") if up else (403, "refused"))


def test_with_a_prefetch_phase_one_never_fetches(kds: FakeKds, tmp_path: Path) -> None:
    """A phase 1 handed a prefetch that lacks the VCEK (and memory lacks it too) refuses, asking
    nothing; without a prefetch (in-process callers) it fetches."""
    kds.serve_amd(AMD, crl=CRL)
    cas = kds_cas(tmp_path / "cas", kds.url)
    _rt, body = snp_request(cas)
    refused_with = cas.attest_begin(body, prefetched=Prefetched()).refused
    assert isinstance(refused_with, errors.CollateralMissingError)
    assert "was not fetched before this attestation's verification" in refused_with.message
    assert "attest again" in refused_with.message
    assert kds.requests == []
    accepted(cas)  # Cas.attest: its own prefetch, then phase 1
    assert len(kds.requests) == 3


def test_one_fetch_for_concurrent_attestations_of_the_same_chip(tmp_path: Path) -> None:
    """Two attestations that need the same VCEK at once share one fetch (the second waits)."""
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    collateral = AmdCollateral(
        AMD.vek.public_bytes(serialization.Encoding.DER),
        AMD.chain_pem(),
        CRL.public_bytes(serialization.Encoding.DER),
    )

    class Slow:
        def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
            calls.append(1)
            started.set()
            assert release.wait(30)
            return collateral

    cache = KdsVcekCache(Slow(), tmp_path / "kds-cache", AMD.roots())
    request = vek_request(AMD.sign(AMD.report()))
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(cache.fetch(request, NOW)))
    second = threading.Thread(target=lambda: results.append(cache.fetch(request, NOW)))
    first.start()
    try:
        assert started.wait(30)
        second.start()
        second.join(timeout=0.5)  # it waits for the first fetch (or has not run yet)
        assert calls == [1]
    finally:
        release.set()
        first.join(timeout=30)
        second.join(timeout=30)
    assert calls == [1] and len(results) == 2 and results[0] is results[1]


def test_a_failed_fetch_is_shared_by_the_waiters_and_reported_by_phase_one(tmp_path: Path) -> None:
    calls: list[int] = []

    class Down:
        def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
            calls.append(1)
            raise errors.NetworkError(
                "AMD KDS /vcek/v1/Milan/...: got HTTP 429, expected 200 (retry after 5 s)"
            )

    cache = KdsVcekCache(Down(), None, AMD.roots(), where="AMD KDS fake")
    request = vek_request(AMD.sign(AMD.report()))
    outcome = cache.prefetch(request, NOW)  # raises nothing: returns the error
    assert isinstance(outcome, errors.CollateralMissingError)
    assert calls == [1]
    with pytest.raises(
        errors.CollateralMissingError, match="fetching it from AMD KDS fake failed: NetworkError"
    ):
        cache.get(request, NOW)
    assert calls == [1]  # phase 1 reported the prefetch's error, without asking again


def test_the_memory_and_disk_caches_are_bounded(tmp_path: Path) -> None:
    chips = [make_fake_amd(Product.MILAN, chip_id=bytes([i]) * 64) for i in range(1, 5)]
    by_hwid = {c.chip_id.hex(): c for c in chips}

    class Local:
        def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
            amd = by_hwid[request.hwid]
            return AmdCollateral(
                amd.vek.public_bytes(serialization.Encoding.DER), AMD.chain_pem(),
                CRL.public_bytes(serialization.Encoding.DER),
            )  # fmt: skip

    cache = KdsVcekCache(Local(), tmp_path / "kds-cache", AMD.roots(), memory_entries=2, disk_veks=3)
    requests = [vek_request(c.sign(c.report())) for c in chips]
    for r in requests:
        cache.fetch(r, NOW)
    assert cache.cached(requests[0], NOW) is None and cache.cached(requests[3], NOW) is not None
    assert len(list((tmp_path / "kds-cache").glob("*/v1/*/*/*.der"))) == 3
    assert cache.fetches == 4


def test_kds_serve_option_is_checked(tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match=r"--kds: got .kdsintf\.amd\.com., expected an http"):
        prepare(
            tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral=None, kds="kdsintf.amd.com"
        )


@pytest.fixture(scope="module")
def idle_cas(tmp_path_factory: pytest.TempPathFactory) -> Cas:
    """A CAS with --kds pointing at a closed port (collateral_job never fetches)."""
    return kds_cas(tmp_path_factory.mktemp("idle") / "cas", "http://127.0.0.1:9")


_B64 = st.binary(max_size=1300).map(lambda b: base64.b64encode(b).decode())


@settings(max_examples=200, deadline=None)
@given(
    evidence=_B64 | st.text(max_size=20) | st.integers() | st.none(),
    aux=st.none()
    | st.text(max_size=5)
    | st.dictionaries(st.text(max_size=8), _B64 | st.integers(), max_size=3),
)
def test_collateral_job_is_total_on_hostile_requests(idle_cas: Cas, evidence: Any, aux: Any) -> None:
    """The job is decided before phase 1 from hostile input: it never raises (phase 1 refuses)."""
    job = idle_cas.collateral_job({"platform": "sev-snp", "evidence": evidence, "aux": aux})
    assert job is None or callable(job.fetch)


def test_collateral_job_for_a_report_sent_without_its_vcek(idle_cas: Cas) -> None:
    _rt, body = snp_request(idle_cas)
    job = idle_cas.collateral_job(body)
    assert job is not None and callable(job.fetch)
    assert idle_cas.collateral_job({**body, "platform": "sim"}) is None
    _rt, empty = snp_request(idle_cas, aux={"auxblob": b""})  # an empty table: no VCEK sent
    job = idle_cas.collateral_job(empty)
    assert job is not None and callable(job.fetch)


@pytest.mark.parametrize("order", ["vcek-first", "vlek-first"])
def test_a_certificate_table_with_a_vcek_and_a_vlek_gives_the_key_that_signed(order: str) -> None:
    """A host's certificate table (GHCB "SNP Extended Guest Request") may hold both a VCEK and a
    VLEK; the report's SIGNING_KEY (ABI Table 23, 0x048 bits 4:2) says which one signed it. The
    VCEK was always taken first, so a VLEK-signed report was refused (its VEK "is a VCEK")."""
    vlek = make_fake_amd(Product.MILAN, VekKind.VLEK)
    vcek = make_fake_amd(Product.MILAN)
    der = {k: a.vek.public_bytes(serialization.Encoding.DER) for k, a in (("vcek", vcek), ("vlek", vlek))}
    entries = [(VCEK_GUID, der["vcek"]), (VLEK_GUID, der["vlek"])]
    table = cert_table(entries if order == "vcek-first" else entries[::-1])
    verifier = PlatformVerifier(amd_roots=vlek.roots())
    report = vlek.sign(vlek.report())
    verified = verifier.verify(Platform.SEV_SNP, report, {"auxblob": table}, at=SNP_AT)
    assert verified.claims["signing_key"] == "vlek" and verified.details["vcek_source"] == "sent"
    vcek_verifier = PlatformVerifier(amd_roots=vcek.roots())
    signed_by_vcek = vcek.sign(vcek.report())
    assert (
        vcek_verifier.verify(Platform.SEV_SNP, signed_by_vcek, {"auxblob": table}, at=SNP_AT).claims[
            "signing_key"
        ]
        == "vcek"
    )
