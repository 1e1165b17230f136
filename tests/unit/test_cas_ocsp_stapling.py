"""Stapled OCSP responses for NVIDIA GPU chains (``aux ocsp:<i>`` / ``gpu<k>.ocsp:<i>``):

- the pure check (``confide.verify.ocsp``: ``OcspResponse.max_age``, ``stapled_is_stale``);
- the CAS with a responder URL (``cas serve --nvidia-ocsp URL``: a usable stapled response is
  used instead of asking, a stale or missing one is asked about) and stapled only (``--nvidia-ocsp
  stapled``: nobody is asked), in process (``Cas.attest``) and through the API, against the fake
  OCSP responder of ``tests/ocsp_responder.py``, which counts what it is asked, signing under the
  forged test PKI of ``nvidia_forge``;
- the runtime's side (``confide run --gpu-ocsp``: ``GpuQuoteProvider(ocsp=...)``) end to end into
  a stapled-only CAS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from asgi_call import call
from cas_inproc import Clock, InProcessCas, InProcessClient, RuntimeKey, last_attestation, refused
from cli import run_confide
from confide import errors
from confide.cas.app import create_app
from confide.cas.revocation import OcspCache, parse_stapled_max_age
from confide.cas.verifier import PlatformVerifier
from confide.collateral.nvidia_ocsp import HttpOcspSource
from confide.runtime.nvidia import GpuQuoteProvider
from confide.runtime.quote import Evidence, SimQuoteProvider
from confide.runtime.run import attest_and_prepare
from confide.verify.ocsp import (
    MAX_RESPONSE_SIZE,
    MAX_STAPLED,
    STAPLED_MAX_AGE,
    OcspResponse,
    stapled_is_stale,
    verify_ocsp_response,
)
from confide.verify.result import Platform
from gpu_cas import CPU, FWID, GPU_POLICY, NOW, NV_REPORT, PKI, SECOND, accepted
from nvidia_forge import NvidiaPki, make_ca, make_leaf, make_responder, ocsp_response, resign
from nvidia_forge import make_pki as make_nvidia_pki
from ocsp_responder import FakeOcsp
from pki import Issuer

# gpu_cas.PKI: root -> "Test ICA" -> leaf: position 1 (the ICA) is checked.


@dataclass(frozen=True)
class LongPki:
    """root -> "Test ICA 1" -> "Test ICA 2" -> leaf: positions 1 (ICA 2) and 2 (ICA 1) are checked."""

    root: Issuer
    ica1: Issuer
    ica2: Issuer
    leaf: Issuer

    def chain_pem(self) -> bytes:
        return b"".join(c[0].public_bytes(Encoding.PEM) for c in (self.leaf, self.ica2, self.ica1, self.root))


ICA1 = make_ca("Test ICA 1", NOW, PKI.root)
ICA2 = make_ca("Test ICA 2", NOW, ICA1)
LONG = LongPki(PKI.root, ICA1, ICA2, make_leaf(ICA2, FWID, NOW))

KNOWN: dict[int, tuple[x509.Certificate, Issuer]] = {
    PKI.ica[0].serial_number: (PKI.ica[0], PKI.root),
    ICA2[0].serial_number: (ICA2[0], ICA1),
    ICA1[0].serial_number: (ICA1[0], PKI.root),
}

POLICY = GPU_POLICY


def response(
    cert: x509.Certificate,
    issuer: Issuer,
    *,
    at: datetime = NOW,
    signer: Issuer | None = None,
    age: timedelta = timedelta(minutes=1),
    valid_for: timedelta | None = timedelta(hours=1),
    **changes: Any,
) -> bytes:
    """A response about ``cert`` as NVIDIA's responder would give it to the runtime: thisUpdate
    ``age`` before ``at``, nextUpdate ``valid_for`` after ``at``, a nonce of the runtime's."""
    args: dict[str, Any] = {
        "this_update": at - age, "next_update": None if valid_for is None else at + valid_for,
        "nonce": b"\x01" * 32,
    }  # fmt: skip
    args.update(changes)
    return ocsp_response(cert, issuer[0], signer or issuer, **args)


GOOD = response(PKI.ica[0], PKI.root)


# --- the pure check ---------------------------------------------------------------------------------


def test_a_stapled_response_is_bounded_by_its_max_age() -> None:
    stapled = OcspResponse(GOOD, None, timedelta(hours=2))
    check = verify_ocsp_response(stapled, PKI.ica[0], PKI.root[0], at=NOW)
    assert check.to_claim()["stapled"] is True and check.nonce_checked is False
    assert not stapled_is_stale(stapled, NOW)
    # Two hours after thisUpdate: too old, though its nextUpdate has not passed.
    old = OcspResponse(
        response(PKI.ica[0], PKI.root, age=timedelta(hours=2, seconds=1)), None, timedelta(hours=2)
    )
    assert stapled_is_stale(old, NOW)
    with pytest.raises(
        errors.CollateralExpiredError, match=r"stapled, thisUpdate .* is more than 2:00:00 before"
    ):
        verify_ocsp_response(old, PKI.ica[0], PKI.root[0], at=NOW)
    # The same response fetched by the verifier's side (no max_age) is not bounded so.
    assert (
        verify_ocsp_response(OcspResponse(old.der), PKI.ica[0], PKI.root[0], at=NOW).to_claim()["stapled"]
        is False
    )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"valid_for": timedelta(0)}, r"nextUpdate .* is not after"),
        ({"valid_for": None}, "no nextUpdate and no nonce"),  # its nonce is not the verifier's
        ({"age": -timedelta(minutes=6)}, r"thisUpdate .* is after"),  # beyond CLOCK_SKEW
    ],
)
def test_stale_stapled_responses(changes: dict[str, Any], match: str) -> None:
    stapled = OcspResponse(response(PKI.ica[0], PKI.root, **changes), None, STAPLED_MAX_AGE)
    assert stapled_is_stale(stapled, NOW)
    with pytest.raises(errors.CollateralExpiredError, match=match):
        verify_ocsp_response(stapled, PKI.ica[0], PKI.root[0], at=NOW)


def test_a_malformed_stapled_response_is_not_stale_but_refused_as_malformed() -> None:
    for der in (b"\x30\x03\x0a\x01", b"\x00" * 10, b"\x30" * (MAX_RESPONSE_SIZE + 1)):
        stapled = OcspResponse(der, None, STAPLED_MAX_AGE)
        assert not stapled_is_stale(stapled, NOW)
        with pytest.raises(errors.ParseError):
            verify_ocsp_response(stapled, PKI.ica[0], PKI.root[0], at=NOW)


# --- the CAS ----------------------------------------------------------------------------------------


class Responder(FakeOcsp):
    """An honest fake responder at the CAS's clock (signed by the issuer, nonce echoed)."""

    def __init__(self, clock: Clock[float]) -> None:
        super().__init__(KNOWN, self.honest)
        self.clock = clock

    def honest(self, cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        return 200, response(cert, issuer, at=datetime.fromtimestamp(self.clock.now, UTC), nonce=nonce)


@pytest.fixture
def clock() -> Clock[float]:
    return Clock(NOW.timestamp())


@pytest.fixture
def responder(clock: Clock[float]) -> Iterator[Responder]:
    server = Responder(clock).start()
    try:
        yield server
    finally:
        server.stop()


def start_cas(tmp_path: Path, clock: Clock[float], name: str = "cas", **verifier: Any) -> InProcessCas:
    inproc = InProcessCas.start(tmp_path / name, POLICY).verify_with(nvidia_root=PKI.root[0], **verifier)
    inproc.cas.clock = clock
    return inproc


@pytest.fixture
def cas(tmp_path: Path, clock: Clock[float], responder: Responder) -> Iterator[InProcessCas]:
    """A CAS with a responder URL: stapled responses are used instead of asking when usable."""
    with HttpOcspSource(responder.url, timeout=30) as source:
        yield start_cas(tmp_path, clock, nvidia_ocsp=OcspCache(source))


@pytest.fixture
def stapled_only(tmp_path: Path, clock: Clock[float]) -> InProcessCas:
    """A CAS started with ``--nvidia-ocsp stapled``: it asks nobody."""
    return start_cas(tmp_path, clock, "stapled", nvidia_ocsp_stapled_only=True)


class Runtime(RuntimeKey):
    def __init__(self, inproc: InProcessCas) -> None:
        super().__init__(inproc.cas)
        self.inproc = inproc

    def gpu_only(self, stapled: dict[str, bytes], pki: NvidiaPki | LongPki = PKI) -> dict[str, Any]:
        report = resign(NV_REPORT, pki.leaf[1], nonce=self.binding[:32])
        aux = {"certs": pki.chain_pem(), **stapled}
        return self.body(policy="app", service="gpu", platform="nvidia-gpu", evidence=report, aux=aux)

    def composite(self, stapled0: dict[str, bytes], stapled1: dict[str, bytes]) -> dict[str, Any]:
        cpu = self.inproc.platform.issue(
            report_data=self.binding, measurement=bytes.fromhex(CPU), timestamp=int(self.inproc.cas.clock())
        ).to_bytes()
        aux: dict[str, bytes] = {}
        for k, (pki, stapled) in enumerate([(PKI, stapled0), (SECOND, stapled1)]):
            aux[f"gpu{k}"] = resign(NV_REPORT, pki.leaf[1], nonce=self.binding[:32])
            aux[f"gpu{k}.certs"] = pki.chain_pem()
            aux |= {f"gpu{k}.{key}": der for key, der in stapled.items()}
        return self.body(policy="app", service="ai", platform="sim", evidence=cpu, aux=aux)


def test_a_good_stapled_response_is_used_and_the_responder_is_not_asked(
    cas: InProcessCas, responder: Responder
) -> None:
    rt = Runtime(cas)
    request = rt.gpu_only({"ocsp:1": GOOD})
    assert cas.cas.collateral_job(request) is None  # nothing to prefetch
    event = accepted(cas, request, rt)
    assert (event["revocation_checked"], event["ocsp_source"]) == (True, "stapled")
    # Composite: both GPUs stapled (the same ICA); still nothing asked.
    rt2 = Runtime(cas)
    event = accepted(cas, rt2.composite({"ocsp:1": GOOD}, {"ocsp:1": GOOD}), rt2)
    assert [(g["slot"], g["ocsp_source"]) for g in event["gpus"]] == [
        ("gpu0", "stapled"),
        ("gpu1", "stapled"),
    ]
    assert responder.requests == []
    # Without a stapled response the responder is asked, as before.
    rt3 = Runtime(cas)
    event = accepted(cas, rt3.gpu_only({}), rt3)
    assert (event["ocsp_source"], responder.served()) == ("responder", [PKI.ica[0].serial_number])


def test_a_revoked_stapled_response_refuses_without_asking(cas: InProcessCas, responder: Responder) -> None:
    revoked = response(PKI.ica[0], PKI.root, status=ocsp.OCSPCertStatus.REVOKED)
    rt = Runtime(cas)
    error = refused(
        cas.cas, rt.gpu_only({"ocsp:1": revoked}), errors.RevocationError, r"'Test ICA' .* is revoked"
    )
    assert error.exit_code == 23
    rt2 = Runtime(cas)
    refused(
        cas.cas,
        rt2.composite({"ocsp:1": GOOD}, {"ocsp:1": revoked}),
        errors.RevocationError,
        r"^gpu1: .* is revoked",
    )
    assert responder.requests == []


@pytest.mark.parametrize(
    "changes",
    [{"age": STAPLED_MAX_AGE + timedelta(seconds=1)}, {"valid_for": timedelta(0)}, {"valid_for": None}],
    ids=["older-than-max-age", "next-update-passed", "no-next-update"],
)
def test_a_stale_stapled_response_falls_back_to_the_responder(
    cas: InProcessCas, responder: Responder, stapled_only: InProcessCas, changes: dict[str, Any]
) -> None:
    stale = response(PKI.ica[0], PKI.root, **changes)
    rt = Runtime(cas)
    request = rt.gpu_only({"ocsp:1": stale})
    job = cas.cas.collateral_job(request)
    assert job is not None and job.fetch is not None  # prefetched from the responder
    event = accepted(cas, request, rt)
    assert (event["ocsp_source"], responder.served()) == ("responder", [PKI.ica[0].serial_number])
    # Stapled only: refused.
    rt2 = Runtime(stapled_only)
    refused(
        stapled_only.cas,
        rt2.gpu_only({"ocsp:1": stale}),
        errors.CollateralExpiredError,
        "OCSP response for 'Test ICA'",
    )


def test_the_max_age_is_configurable(tmp_path: Path, clock: Clock[float]) -> None:
    inproc = start_cas(
        tmp_path, clock, nvidia_ocsp_stapled_only=True, nvidia_ocsp_max_age=timedelta(minutes=30)
    )
    rt = Runtime(inproc)
    accepted(inproc, rt.gpu_only({"ocsp:1": response(PKI.ica[0], PKI.root, age=timedelta(minutes=29))}), rt)
    rt2 = Runtime(inproc)
    old = response(PKI.ica[0], PKI.root, age=timedelta(minutes=31))
    refused(
        inproc.cas, rt2.gpu_only({"ocsp:1": old}), errors.CollateralExpiredError, "more than 0:30:00 before"
    )
    with pytest.raises(ValueError, match="positive"):
        PlatformVerifier(nvidia_ocsp_stapled_only=True, nvidia_ocsp_max_age=timedelta(0))


def test_a_response_about_another_certificate_refuses(cas: InProcessCas, responder: Responder) -> None:
    # About the leaf (the right issuer, another serial), and about another ICA of the same name
    # and serial space (another issuer key).
    impostor = make_ca("Test ICA", NOW, make_ca("Test Device Identity CA", NOW))
    for der in (response(PKI.leaf[0], PKI.ica), response(impostor[0], PKI.root)):
        rt = Runtime(cas)
        refused(
            cas.cas,
            rt.gpu_only({"ocsp:1": der}),
            errors.CollateralError,
            r"the response is for serial .* of another issuer",
        )
    assert responder.requests == []


def test_a_stapled_response_by_an_unauthorised_signer_refuses(
    cas: InProcessCas, responder: Responder
) -> None:
    stranger = make_ca("Test Device Identity CA", NOW)
    cases = [
        (make_responder(PKI.root, NOW, eku=False), True, "lacks extended key usage id-kp-OCSPSigning"),
        (make_responder(stranger, NOW), True, "was not issued by|does not verify"),
        (stranger, False, "neither 'Test Device Identity CA' nor a certificate carried"),
    ]
    for signer, carry, match in cases:
        der = response(PKI.ica[0], PKI.root, signer=signer, carry=carry)
        rt = Runtime(cas)
        refused(cas.cas, rt.gpu_only({"ocsp:1": der}), errors.CertificateChainError, match)
    # A delegated responder the issuer did authorise is accepted.
    delegate = make_responder(PKI.root, NOW)
    rt = Runtime(cas)
    event = accepted(
        cas, rt.gpu_only({"ocsp:1": response(PKI.ica[0], PKI.root, signer=delegate, carry=True)}), rt
    )
    assert event["ocsp_source"] == "stapled"
    assert responder.requests == []


def test_a_tampered_stapled_response_refuses(cas: InProcessCas, responder: Responder) -> None:
    # The last byte is the signature's; thisUpdate's last digit of seconds is signed data (a
    # change that leaves it current: a response stale by its dates is not used at all).
    tampered = [GOOD[:-1] + bytes([GOOD[-1] ^ 1])]
    stamp = (NOW - timedelta(minutes=1)).strftime("%Y%m%d%H%M%S").encode()
    at = GOOD.index(stamp) + len(stamp) - 1
    tampered.append(GOOD[:at] + bytes([GOOD[at] ^ 1]) + GOOD[at + 1 :])
    for der in tampered:
        rt = Runtime(cas)
        with pytest.raises((errors.SignatureError, errors.ParseError)):
            cas.cas.attest(rt.gpu_only({"ocsp:1": der}))
        assert last_attestation(cas.cas)["verdict"] == "refused"
    assert responder.requests == []


@pytest.mark.parametrize(
    ("stapled", "match"),
    [
        ({f"ocsp:{i}": GOOD for i in range(1, MAX_STAPLED + 2)}, f"more than {MAX_STAPLED} stapled"),
        ({"ocsp:1": b"\x30" * (MAX_RESPONSE_SIZE + 1)}, f"expected at most {MAX_RESPONSE_SIZE}"),
        ({"ocsp:2": GOOD}, "about certificates 1 to 1 of the 3-certificate chain"),
        ({"ocsp:0": GOOD}, "expected ocsp:<i>"),
        ({"ocsp:01": GOOD}, "expected ocsp:<i>"),
        ({"ocsp:x": GOOD}, "expected ocsp:<i>"),
        ({"ocsp:1": b"\x30\x03\x0a\x01"}, "not a DER OCSP response"),
    ],
)
def test_hostile_stapled_blobs_are_parse_errors(
    cas: InProcessCas, responder: Responder, stapled: dict[str, bytes], match: str
) -> None:
    rt = Runtime(cas)
    with pytest.raises(errors.ParseError, match=match):
        cas.cas.attest(rt.gpu_only(stapled))
    # Through the API: HTTP 400 (the request's bytes), and nothing asked.
    rt2 = Runtime(cas)
    status, body = call(create_app(cas.cas), "/v1/attest", [json.dumps(rt2.gpu_only(stapled)).encode()])
    assert (status, json.loads(body)["error"]["class"]) == (400, "ParseError")
    assert responder.requests == []


def test_gpu_keys_of_a_composite_request(cas: InProcessCas) -> None:
    rt = Runtime(cas)
    for key, match in [("gpu1.ocsp", r"gpu<k>\.ocsp:<i>"), ("gpu1.ocsp:0", "expected ocsp:<i>")]:
        request = rt.composite({"ocsp:1": GOOD}, {})
        request["aux"][key] = request["aux"]["gpu1.certs"]
        with pytest.raises(errors.ParseError, match=match):
            cas.cas.attest(request)


def test_mixed_stapled_and_asked(tmp_path: Path, clock: Clock[float], responder: Responder) -> None:
    with HttpOcspSource(responder.url, timeout=30) as source:
        inproc = start_cas(tmp_path, clock, nvidia_ocsp=OcspCache(source))
        rt = Runtime(inproc)
        # Position 1 (ICA 2) stapled, position 2 (ICA 1) asked about.
        event = accepted(inproc, rt.gpu_only({"ocsp:1": response(ICA2[0], ICA1)}, LONG), rt)
        assert (event["ocsp_source"], responder.served()) == ("stapled+responder", [ICA1[0].serial_number])
        # Composite: gpu0 stapled, gpu1 not: the ICA asked about once, for gpu1.
        rt2 = Runtime(inproc)
        event = accepted(inproc, rt2.composite({"ocsp:1": GOOD}, {}), rt2)
        assert [g["ocsp_source"] for g in event["gpus"]] == ["stapled", "responder"]
        assert responder.served() == [ICA1[0].serial_number, PKI.ica[0].serial_number]


def test_stapled_only_needs_every_response(stapled_only: InProcessCas) -> None:
    rt = Runtime(stapled_only)
    event = accepted(stapled_only, rt.gpu_only({"ocsp:1": GOOD}), rt)
    assert (event["revocation_checked"], event["rim_revocation_checked"], event["ocsp_source"]) == (
        True,
        False,
        "stapled",
    )
    rt2 = Runtime(stapled_only)
    refused(
        stapled_only.cas,
        rt2.gpu_only({"ocsp:1": response(ICA2[0], ICA1)}, LONG),
        errors.CollateralMissingError,
        r"no stapled OCSP response about certificate 2 \('Test ICA 1'.* \(aux ocsp:2\).*\(--nvidia-ocsp stapled\)",
    )
    # A chain that does not verify is refused as such, not for a missing response.
    other = make_nvidia_pki(NV_REPORT, NOW)
    rt3 = Runtime(stapled_only)
    refused(
        stapled_only.cas, rt3.gpu_only({}, other), errors.CertificateChainError, "expected the pinned root"
    )
    rt4 = Runtime(stapled_only)
    refused(stapled_only.cas, rt4.composite({"ocsp:1": GOOD}, {}), errors.CollateralMissingError, "^gpu1: ")
    with pytest.raises(ValueError, match="no nvidia_ocsp source"):
        PlatformVerifier(nvidia_ocsp_stapled_only=True, nvidia_ocsp=object())  # type: ignore[arg-type]


def test_without_revocation_checks_stapled_responses_are_not_used(
    tmp_path: Path, clock: Clock[float]
) -> None:
    inproc = start_cas(tmp_path, clock)
    rt = Runtime(inproc)
    revoked = response(PKI.ica[0], PKI.root, status=ocsp.OCSPCertStatus.REVOKED)
    event = accepted(inproc, rt.gpu_only({"ocsp:1": revoked}), rt)
    assert (event["revocation_checked"], event["ocsp_source"]) == (False, None)


def test_end_to_end_through_the_api(stapled_only: InProcessCas) -> None:
    app = create_app(stapled_only.cas)
    rt = Runtime(stapled_only)
    status, body = call(app, "/v1/attest", [json.dumps(rt.gpu_only({"ocsp:1": GOOD})).encode()])
    assert status == 200 and rt.open(json.loads(body))["command"]
    assert last_attestation(stapled_only.cas)["ocsp_source"] == "stapled"
    rt2 = Runtime(stapled_only)
    revoked = response(PKI.ica[0], PKI.root, status=ocsp.OCSPCertStatus.REVOKED)
    status, body = call(app, "/v1/attest", [json.dumps(rt2.gpu_only({"ocsp:1": revoked})).encode()])
    error = json.loads(body)["error"]
    assert (status, error["class"], error["exit_code"]) == (403, "RevocationError", 23)


# --- the runtime ------------------------------------------------------------------------------------


class FakeGpus:
    """Two GPUs (PKI and SECOND, one ICA) whose reports are forged for the nonce asked for."""

    def devices(self) -> int:
        return 2

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        return resign(NV_REPORT, (PKI, SECOND)[index].leaf[1], nonce=nonce)

    def certificate_chain(self, index: int) -> bytes:
        return (PKI, SECOND)[index].chain_pem()


def test_the_runtime_staples_and_a_stapled_only_cas_accepts(
    stapled_only: InProcessCas, responder: Responder
) -> None:
    cpu = SimQuoteProvider(stapled_only.platform, bytes.fromhex(CPU), clock=lambda: NOW)
    client = InProcessClient(stapled_only.cas)
    with HttpOcspSource(responder.url, timeout=30) as source:
        provider = GpuQuoteProvider(cpu, FakeGpus(), ocsp=source, clock=lambda: NOW)
        evidence = provider.get_evidence(RuntimeKey(stapled_only.cas).binding)
        assert sorted(k for k in evidence.aux if ".ocsp:" in k) == ["gpu0.ocsp:1", "gpu1.ocsp:1"]
        # The shared ICA was asked about once, with the runtime's nonce (application/ocsp-request).
        assert responder.requests == [("application/ocsp-request", PKI.ica[0].serial_number)]
        plan = attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert plan.argv[:2] == ["serve", "--token"]
    event = last_attestation(stapled_only.cas)
    assert [(g["revocation_checked"], g["ocsp_source"]) for g in event["gpus"]] == [(True, "stapled")] * 2
    assert len(responder.requests) == 2  # one per attestation, by the runtime; none by the CAS


def test_the_runtime_refuses_a_revoked_chain_before_sending(
    stapled_only: InProcessCas, responder: Responder
) -> None:
    responder.behaviour = lambda cert, issuer, nonce: (
        200, response(cert, issuer, nonce=nonce, status=ocsp.OCSPCertStatus.REVOKED)
    )  # fmt: skip
    cpu = SimQuoteProvider(stapled_only.platform, bytes.fromhex(CPU), clock=lambda: NOW)
    client = InProcessClient(stapled_only.cas)
    with HttpOcspSource(responder.url, timeout=30) as source:
        provider = GpuQuoteProvider(cpu, FakeGpus(), ocsp=source, clock=lambda: NOW)
        with pytest.raises(errors.RevocationError, match=r"'Test ICA' .* is revoked"):
            attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 0


def test_the_runtime_refuses_a_response_without_next_update(responder: Responder) -> None:
    # Accepted for the runtime's own nonce, but a CAS could not tell whether a copy is current.
    responder.behaviour = lambda cert, issuer, nonce: (
        200,
        response(cert, issuer, nonce=nonce, valid_for=None),
    )
    with HttpOcspSource(responder.url, timeout=30) as source:
        provider = GpuQuoteProvider(_FixedSim(), FakeGpus(), ocsp=source, clock=lambda: NOW)
        with pytest.raises(errors.CollateralExpiredError, match=r"gpu0: .* 'Test ICA' has no nextUpdate"):
            provider.get_evidence(bytes(64))


class _FixedSim:
    def get_evidence(self, report_data: bytes) -> Evidence:
        return Evidence(platform=Platform.SIMULATED, raw=b"cpu", provider="fixed", aux={})


# --- options -----------------------------------------------------------------------------------------


def test_max_age_option() -> None:
    assert parse_stapled_max_age("12h") == timedelta(hours=12)
    for text in ("30s", "31 days", "soon"):
        with pytest.raises(errors.UsageError, match="--nvidia-ocsp-max-age"):
            parse_stapled_max_age(text)


def test_cli_refusals(tmp_path: Path) -> None:
    proc = run_confide(
        "cas", "serve", "--data-dir", tmp_path / "cas", "--listen", "127.0.0.1:0", "--dev",
        "--nvidia-ocsp-max-age", "1h", timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--nvidia-ocsp-max-age needs --nvidia-ocsp" in proc.stdout + proc.stderr
    proc = run_confide("run", "--config-id", "app/gpu", "--gpu-ocsp", "http://127.0.0.1:1/", timeout=60)
    assert proc.returncode == 2 and "--gpu-ocsp needs --gpus" in proc.stdout + proc.stderr
