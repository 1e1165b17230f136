"""Collateral sources: bundle file, PCS directory, and Intel PCS/PCCS over HTTP (a local fake)."""

from __future__ import annotations

import shutil
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import run_confide
from confide import errors
from confide.collateral.dcap import BundleFileSource, PcsDirectorySource, PcsHttpSource, source_for
from confide.evidence.dcap import Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import pem_chain
from confide.verify.dcap import pck_info, verify_quote
from dcap_cases import ASSETS, CASES
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn

SGX = CASES[0]


def test_bundle_source(tmp_path: Path) -> None:
    src = source_for(str(ASSETS / SGX.collateral))
    assert isinstance(src, BundleFileSource)
    coll = src.get_collateral(fmspc=b"", ca="processor", tee=TeeType.SGX)
    assert verify_quote(SGX.quote_bytes(), coll, at=SGX.time).tcb_status is not None
    with pytest.raises(errors.CollateralMissingError):
        BundleFileSource(tmp_path / "nope.json").get_collateral(fmspc=b"", ca="platform", tee=TeeType.SGX)


def test_pcs_directory_from_go_tdx_guest() -> None:
    """go-tdx-guest's raw PCS responses, read as a directory: same verdict as the bundle."""
    case = next(c for c in CASES if "SPR_E4" in c.quote)
    quote = Quote.from_bytes(case.quote_bytes())
    fmspc, ca = pck_info(quote)
    src = source_for(str(ASSETS / "tdx/google-go-tdx-guest"))
    assert isinstance(src, PcsDirectorySource)
    coll = src.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    bundle = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
    assert coll.tcb_info == bundle.tcb_info and coll.qe_identity == bundle.qe_identity
    with pytest.raises(errors.TcbLevelNotFoundError):
        verify_quote(case.quote_bytes(), coll, at=case.time)


def test_pcs_directory_assembled_from_automata_pieces(tmp_path: Path) -> None:
    """June-2025 PCS responses for FMSPC 00806F050000 + the 2025 Root CA CRL; no issuer chain
    files, so the embedded TCB Signing certificate (2025 issuance) is used."""
    base = ASSETS / "tdx/automata-dcap-attestation/0625"
    for name in ("tcbinfov3_00806f050000.json", "qe_td.json", "pck_platform_crl_2025-06-04.der"):
        shutil.copy(base / name, tmp_path / name)
    shutil.copy(ASSETS / "intel-roots/automata/IntelSGXRootCA_crl_2025-03-20.der", tmp_path / "root.crl")
    (tmp_path / "notes.txt").write_text("unrelated file")
    case = next(c for c in CASES if "cos-113" in c.quote and "0625" in c.collateral)
    quote = Quote.from_bytes(case.quote_bytes())
    fmspc, ca = pck_info(quote)
    coll = PcsDirectorySource(tmp_path).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    assert verify_quote(case.quote_bytes(), coll, at=case.time).tcb_status is not None
    (tmp_path / "qe_td.json").unlink()
    with pytest.raises(errors.CollateralMissingError, match="QE Identity"):
        PcsDirectorySource(tmp_path).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)


class FakePcs:
    """Serves one platform's collateral the way Intel PCS API v4 does (plus a PCCS root CRL)."""

    def __init__(self, coll: DcapCollateral, fmspc: str, ca: str) -> None:
        self.hits: Counter[str] = Counter()
        chain = urllib.parse.quote(pem_chain(coll.tcb_info_issuer_chain))
        crl_chain = urllib.parse.quote(pem_chain(coll.pck_crl_issuer_chain))
        tcb = (
            b'{"tcbInfo":'
            + coll.tcb_info
            + b',"signature":"'
            + coll.tcb_info_signature.hex().encode()
            + b'"}'
        )
        qe = (
            b'{"enclaveIdentity":'
            + coll.qe_identity
            + b',"signature":"'
            + coll.qe_identity_signature.hex().encode()
            + b'"}'
        )
        self.routes: dict[str, tuple[bytes, dict[str, str]]] = {
            f"/sgx/certification/v4/tcb?fmspc={fmspc}": (tcb, {"TCB-Info-Issuer-Chain": chain}),
            "/sgx/certification/v4/qe/identity": (qe, {"SGX-Enclave-Identity-Issuer-Chain": chain}),
            f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der": (
                coll.pck_crl,
                {"SGX-PCK-CRL-Issuer-Chain": crl_chain},
            ),
            "/sgx/certification/v4/rootcacrl": (coll.root_ca_crl.hex().encode(), {}),
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.hits[self.path] += 1
                body, headers = fake.routes.get(self.path, (b"", {}))
                self.send_response(200 if self.path in fake.routes else 404)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_pcs() -> Iterator[FakePcs]:
    coll = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())
    server = FakePcs(coll, "00a067110000", "processor")
    yield server
    server.close()


def test_http_source_fetches_caches_and_refreshes(fake_pcs: FakePcs, tmp_path: Path) -> None:
    now = [SGX.time]
    src = PcsHttpSource(fake_pcs.url, cache_dir=tmp_path, clock=lambda: now[0])
    quote = Quote.from_bytes(SGX.quote_bytes())
    fmspc, ca = pck_info(quote)
    coll = src.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    assert coll == DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())
    assert verify_quote(SGX.quote_bytes(), coll, at=SGX.time).tcb_status is not None
    assert sum(fake_pcs.hits.values()) == 4
    # Within nextUpdate: served from the disk cache, by a new source object too.
    PcsHttpSource(fake_pcs.url, cache_dir=tmp_path, clock=lambda: now[0]).get_collateral(
        fmspc=fmspc, ca=ca, tee=quote.tee
    )
    assert sum(fake_pcs.hits.values()) == 4
    # Past the TCB Info's nextUpdate (2025-07-19): fetched again.
    now[0] = datetime(2025, 7, 20, tzinfo=UTC)
    src.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    assert fake_pcs.hits[f"/sgx/certification/v4/tcb?fmspc={fmspc.hex()}"] == 2


def test_http_source_errors(fake_pcs: FakePcs, tmp_path: Path) -> None:
    src = PcsHttpSource(fake_pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time)
    with pytest.raises(errors.CollateralMissingError, match="404"):
        src.get_collateral(fmspc=bytes(6), ca="processor", tee=TeeType.SGX)
    dead = PcsHttpSource("http://127.0.0.1:9", cache_dir=tmp_path, clock=lambda: SGX.time)
    with pytest.raises(errors.NetworkError):
        dead.get_collateral(fmspc=bytes(6), ca="processor", tee=TeeType.SGX)
    # a corrupted cache entry is ignored, not trusted
    for p in tmp_path.iterdir():
        p.write_text("{not json")
    src.get_collateral(fmspc=bytes.fromhex("00a067110000"), ca="processor", tee=TeeType.SGX)


def test_source_for_url(tmp_path: Path) -> None:
    assert isinstance(source_for("https://pccs.example/", cache_dir=tmp_path), PcsHttpSource)


def test_cache_is_written_atomically(fake_pcs: FakePcs, tmp_path: Path) -> None:
    src = PcsHttpSource(
        fake_pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time - timedelta(minutes=1) + timedelta(minutes=2)
    )
    src.get_collateral(fmspc=bytes.fromhex("00a067110000"), ca="processor", tee=TeeType.SGX)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(list(tmp_path.iterdir())) == 4


def test_cli_collateral_url_reaches_the_pcs(fake_pcs: FakePcs, tmp_path: Path) -> None:
    """``evidence verify --collateral http(s)://...`` fetches from the service (a path type used
    to fold the URL's ``//``, so the URL was read as a missing file)."""
    quote = tmp_path / "quote.dat"
    quote.write_bytes(SGX.quote_bytes())
    r = run_confide(
        "evidence", "verify", quote, "--platform", "sgx", "--collateral", fake_pcs.url,
        "--at", SGX.time.isoformat(), "--json",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sum(fake_pcs.hits.values()) == 4


def test_pcs_directory_skips_malformed_certificates_and_crls(tmp_path: Path) -> None:
    """A chain or CRL file whose certificate/CRL loads but whose names do not parse (they are
    read to recognise the file) is not recognised; it crashed the directory reader with
    ValueError/TypeError (found by the mutation campaign)."""
    base = ASSETS / "tdx/automata-dcap-attestation/0625"
    for name in ("tcbinfov3_00806f050000.json", "qe_td.json", "pck_platform_crl_2025-06-04.der"):
        shutil.copy(base / name, tmp_path / name)
    root_crl = (ASSETS / "intel-roots/automata/IntelSGXRootCA_crl_2025-03-20.der").read_bytes()
    (tmp_path / "root.crl").write_bytes(root_crl)
    (tmp_path / "bad.crl").write_bytes(bitstring_cn(root_crl))
    chain = (ASSETS / "tdx/google-go-tdx-guest/tcb_info_issuer_chain.pem").read_bytes()
    ders = [x509.load_pem_x509_certificate(b).public_bytes(Encoding.DER) for b in _pem_blocks(chain)]
    (tmp_path / "bad-chain.pem").write_text(pem_chain([bad_name_tag(ders[0], 1), *ders[1:]]))
    (tmp_path / "bad-version.pem").write_text(pem_chain([bad_version(ders[0]), *ders[1:]]))
    case = next(c for c in CASES if "cos-113" in c.quote and "0625" in c.collateral)
    quote = Quote.from_bytes(case.quote_bytes())
    fmspc, ca = pck_info(quote)
    coll = PcsDirectorySource(tmp_path).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    assert verify_quote(case.quote_bytes(), coll, at=case.time).tcb_status is not None


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [part + end for part in data.split(end) if b"-----BEGIN" in part]
