"""AMD SEV-SNP collateral: VCEK/VLEK, ASK/ASVK+ARK chain and CRL, from AMD KDS or a directory.

One interface, :class:`AmdCollateralSource` (one method, ``fetch``), and two implementations:

* :class:`LocalKdsCollateral` reads a directory laid out like the KDS URL space::

      {root}/{vcek|vlek}/v1/{Product}/{hwid}/{tcb}.der      the VCEK (or a VLEK put there)
      {root}/{vcek|vlek}/v1/{Product}/cert_chain.pem        ASK (ASVK) then ARK
      {root}/{vcek|vlek}/v1/{Product}/crl.der               ARK-signed CRL (optional)

  where ``hwid`` is the chip id in hex (Turin: its first 8 bytes) and ``tcb`` names the
  reported TCB, e.g. ``bl02-tee00-snp05-ucode68`` (Turin: ``fmc01-bl02-...``).
* :class:`KdsHttpCollateral` asks AMD KDS (AMD 57230, "KDS Interface": ``GET
  /vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` (+ ``fmcSPL`` on
  Turin), ``/{vcek|vlek}/v1/{product}/cert_chain`` and ``.../crl``) over ``httpx2`` and keeps
  what it fetched in the same layout on disk: VCEKs and chains forever (they are immutable),
  the CRL until its ``nextUpdate``, but only what verifies for the request under the pinned AMD
  roots (:func:`check_collateral`): an answer that is not AMD's, or not the one asked for, is
  returned (for the verifier to refuse) but not kept, and cached files that no longer verify
  are fetched again. The base URL and the HTTP transport are injectable; without a cache
  directory it asks the KDS every time (the CAS keeps a verified cache of its own:
  :mod:`confide.cas.kds`). Responses larger than :data:`MAX_RESPONSE_SIZE` are refused, and
  files are read up to that size, regular files only (a FIFO is refused, not waited on).

Nothing fetched here is trusted: ``confide.verify.sev_snp`` verifies it all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx2
from cryptography import x509

from confide.collateral import public_url
from confide.errors import (
    CertificateChainError,
    CollateralMissingError,
    ConfideError,
    NetworkError,
    ParseError,
)
from confide.evidence.sev_snp import AttestationReport, Product, SigningKey, TcbVersion
from confide.fsutil import read_regular
from confide.httpbody import answer_client, fetch
from confide.verify.sev_snp import AmdChain, AmdRootStore, VekKind, load_certificates, verify_vek_chain
from confide.verify.x509util import CERTIFICATE_ERRORS, check_crl_fields

__all__ = [
    "DEFAULT_KDS_URL",
    "MAX_RESPONSE_SIZE",
    "AmdCollateral",
    "AmdCollateralRequest",
    "AmdCollateralSource",
    "KdsHttpCollateral",
    "LocalKdsCollateral",
    "check_collateral",
]

DEFAULT_KDS_URL = "https://kdsintf.amd.com"
_HWID_SIZE_TURIN = 8
_HTTP_OK = 200
_HTTP_NOT_FOUND = 404
MAX_RESPONSE_SIZE = 1 << 20
"""The largest KDS response read (a VCEK is ~1.4 KB, the chain ~4 KB, AMD's CRL a few KB)."""
ANSWER_TIME = 30.0
"""Seconds one answer of the KDS may take to arrive, its connection, status line, headers and
body (:func:`confide.httpbody.fetch`): the read timeout bounds each wait for more bytes only, so
a KDS (or whoever is on the path of an ``http://`` one) sending a byte just within it held the
fetch (a CAS worker thread) for as long as the HTTP parser takes header lines. Longer is a
:class:`NetworkError`."""


@dataclass(frozen=True, slots=True)
class AmdCollateralRequest:
    """What to look up: the VEK of one chip at one reported TCB, and its product's chain/CRL."""

    product: Product
    kind: VekKind
    chip_id: bytes
    reported_tcb: TcbVersion

    @classmethod
    def for_report(cls, report: AttestationReport, product: Product) -> AmdCollateralRequest:
        kind = VekKind.VLEK if report.signing_key is SigningKey.VLEK else VekKind.VCEK
        return cls(product, kind, report.chip_id, report.reported_tcb(product))

    @property
    def hwid(self) -> str:
        chip = self.chip_id[:_HWID_SIZE_TURIN] if self.product is Product.TURIN else self.chip_id
        return chip.hex()

    @property
    def tcb_name(self) -> str:
        t = self.reported_tcb
        name = f"bl{t.bootloader:02d}-tee{t.tee:02d}-snp{t.snp:02d}-ucode{t.microcode:02d}"
        return f"fmc{t.fmc:02d}-{name}" if t.fmc is not None else name

    @property
    def query(self) -> dict[str, str]:
        """KDS query parameters for the VCEK (two-digit decimal, as AMD's examples)."""
        t = self.reported_tcb
        params = {}
        if t.fmc is not None:
            params["fmcSPL"] = f"{t.fmc:02d}"
        params["blSPL"] = f"{t.bootloader:02d}"
        params["teeSPL"] = f"{t.tee:02d}"
        params["snpSPL"] = f"{t.snp:02d}"
        params["ucodeSPL"] = f"{t.microcode:02d}"
        return params

    def product_dir(self) -> str:
        return f"{self.kind.value}/v1/{self.product.value}"

    def vek_relpath(self) -> str:
        return f"{self.product_dir()}/{self.hwid}/{self.tcb_name}.der"


@dataclass(frozen=True, slots=True)
class AmdCollateral:
    vek_der: bytes
    chain_pem: bytes
    crl_der: bytes | None


def read_file(path: Path) -> bytes | None:
    """The bytes of a collateral file, ``None`` when there is none. At most
    :data:`MAX_RESPONSE_SIZE` + 1 bytes are read (a larger file is a :class:`ParseError`), and
    only from a regular file, opened without blocking (a FIFO or a device put there is a
    :class:`CollateralMissingError`, not a read that waits for a writer for ever)."""
    where = str(path)
    try:
        data = read_regular(path, MAX_RESPONSE_SIZE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CollateralMissingError(f"cannot read {where!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_RESPONSE_SIZE:
        raise ParseError(f"got more than {MAX_RESPONSE_SIZE} bytes", structure=f"AMD collateral {where!r}")
    return data


@dataclass(frozen=True, slots=True)
class CheckedCollateral:
    """What :func:`check_collateral` verified: the VEK, its ASK/ASVK+ARK, the ARK's CRL."""

    vek: x509.Certificate
    chain: AmdChain
    crl: x509.CertificateRevocationList | None


def check_collateral(
    request: AmdCollateralRequest,
    collateral: AmdCollateral,
    roots: AmdRootStore,
    at: datetime,
    *,
    signatures_only: bool = False,
) -> CheckedCollateral:
    """Parse and verify ``collateral`` (hostile: from the network or a cache directory) for
    ``request`` at ``at``: one VEK, chained through the intermediate of the cert_chain to the
    pinned ARK of ``roots`` (with the CRL, if any: ARK-signed and current), of the kind and
    product asked for, and a VCEK of the chip id and reported TCB asked for (AMD 57230 §2: KDS
    names a VCEK by product, hwID and TCB; a VCEK of another chip or TCB, or another product's,
    signed by AMD or not, is not the answer to this request). Raises :class:`ParseError` or a
    :class:`~confide.errors.VerificationError`. ``signatures_only``: without the validity dates
    and the revocation check (:func:`~confide.verify.sev_snp.verify_vek_chain`): whether it is
    AMD's answer to this request, what a cache may keep until it is due."""
    try:
        return _checked(request, collateral, roots, at, signatures_only)
    except (ValueError, TypeError) as exc:  # a malformed certificate the checks did not name
        raise ParseError(f"{type(exc).__name__}: {exc}", structure="collateral from AMD KDS") from None


def _checked(
    request: AmdCollateralRequest,
    collateral: AmdCollateral,
    roots: AmdRootStore,
    at: datetime,
    signatures_only: bool,
) -> CheckedCollateral:
    certs = load_certificates(collateral.vek_der, "VCEK from AMD KDS")
    if len(certs) != 1:
        raise ParseError(f"got {len(certs)} certificates, expected 1", structure="VCEK from AMD KDS")
    chain = AmdChain.from_certificates(
        load_certificates(collateral.chain_pem, "cert_chain from AMD KDS"), "cert_chain from AMD KDS"
    )
    crl = None
    if collateral.crl_der is not None:
        try:
            crl = check_crl_fields(x509.load_der_x509_crl(collateral.crl_der))
        except CERTIFICATE_ERRORS as exc:
            raise ParseError(f"not a DER CRL: {exc}", structure="CRL from AMD KDS") from None
    info = verify_vek_chain(certs[0], roots, at, chain=chain, crl=crl, signatures_only=signatures_only)
    kind = request.kind.value.upper()
    wanted = f"the {request.product} {kind} of chip {request.hwid[:16]}... at TCB {request.tcb_name}"
    if request.kind is VekKind.VLEK:
        wanted = f"a {request.product} VLEK at TCB {request.tcb_name}"
    if info.product is not request.product or info.kind is not request.kind:
        got = f"{info.product} {info.kind.value.upper()}"
        raise CertificateChainError(f"AMD KDS: got a {got}, expected {wanted}")
    if request.kind is VekKind.VCEK:
        hwid = info.extensions.hwid
        if hwid is None or hwid.hex() != request.hwid:
            raise CertificateChainError(f"AMD KDS: got a VCEK for another chip, expected {wanted}")
    if info.expected_tcb_raw != request.reported_tcb.raw:
        raise CertificateChainError(f"AMD KDS: got a {kind} for another TCB, expected {wanted}")
    return CheckedCollateral(certs[0], chain, crl)


class AmdCollateralSource(Protocol):
    """Where AMD collateral comes from."""

    def fetch(self, request: AmdCollateralRequest) -> AmdCollateral: ...


class LocalKdsCollateral:
    """Collateral from a directory laid out like AMD KDS (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _read(self, rel: str) -> bytes | None:
        return read_file(self.root / rel)

    def vek(self, request: AmdCollateralRequest) -> bytes | None:
        return self._read(request.vek_relpath())

    def chain(self, request: AmdCollateralRequest) -> bytes | None:
        return self._read(f"{request.product_dir()}/cert_chain.pem")

    def crl(self, request: AmdCollateralRequest) -> bytes | None:
        return self._read(f"{request.product_dir()}/crl.der")

    def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
        vek = self.vek(request)
        if vek is None:
            raise CollateralMissingError(
                f"no {request.kind.value.upper()} for {request.product} chip {request.hwid[:16]}... at TCB "
                f"{request.tcb_name}: expected {str(self.root / request.vek_relpath())!r}"
            )
        chain = self.chain(request)
        if chain is None:
            raise CollateralMissingError(
                f"no cert_chain for {request.product} {request.kind.value}: expected "
                f"{str(self.root / request.product_dir() / 'cert_chain.pem')!r}"
            )
        return AmdCollateral(vek, chain, self.crl(request))

    def store(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` atomically (temporary file + rename)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class KdsHttpCollateral:
    """AMD KDS over HTTP(S), with an on-disk cache in :class:`LocalKdsCollateral` layout
    (``cache_dir``; ``None``: no cache, every :meth:`fetch` asks the KDS).

    ``base_url`` and ``transport`` (any ``httpx2.BaseTransport``) are injectable; ``clock``
    decides whether a cached CRL is still fresh. ``roots`` (required with a cache directory):
    the AMD roots (the pinned ones; a test PKI's in tests) under which collateral's signatures
    must verify, for the request, for it to be kept on disk or served from it
    (:func:`check_collateral`, ``signatures_only``: the verifier judges the dates).
    ``with_crl``: ask for the CRL too; ``crl_required=False``: a KDS (mirror) that answers 404
    for it gives no CRL instead of an error. VLEKs are not served by chip id: they must already
    be in the cache directory (put there by the operator).
    """

    def __init__(
        self,
        cache_dir: Path | None,
        *,
        roots: AmdRootStore | None = None,
        base_url: str = DEFAULT_KDS_URL,
        transport: httpx2.BaseTransport | None = None,
        timeout: float = 10.0,
        with_crl: bool = True,
        crl_required: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        answer_time: float = ANSWER_TIME,
    ) -> None:
        if cache_dir is not None and roots is None:
            raise ValueError("a KDS cache directory needs the AMD roots what it keeps is verified under")
        self.cache = LocalKdsCollateral(cache_dir) if cache_dir is not None else None
        self.roots = roots
        self.base_url = base_url.rstrip("/")
        self.with_crl = with_crl
        self.crl_required = crl_required
        self.clock = clock
        self.answer_time = answer_time
        self._client = answer_client(base_url=self.base_url, transport=transport, timeout=timeout)
        self.requests_made = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KdsHttpCollateral:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        self.requests_made += 1
        where = f"AMD KDS {public_url(self.base_url + path)}"

        def status(resp: httpx2.Response) -> None:
            if resp.status_code == _HTTP_NOT_FOUND:
                raise CollateralMissingError(f"AMD KDS has no {path} (HTTP 404)")
            if resp.status_code != _HTTP_OK:
                retry = resp.headers.get("retry-after")
                raise NetworkError(
                    f"AMD KDS {path}: got HTTP {resp.status_code}, expected 200"
                    + (f" (retry after {retry[:20]} s)" if retry else "")
                )

        try:
            return fetch(
                self._client, "GET", path, params=params, limit=MAX_RESPONSE_SIZE, within=self.answer_time,
                check=status,
                too_large=lambda how: ParseError(f"the answer {how}", structure=f"AMD KDS {path}"),
                too_slow=lambda how: NetworkError(f"{where}: the answer {how}"),
            ).content  # fmt: skip
        except httpx2.HTTPError as exc:
            raise NetworkError(f"{where}: {type(exc).__name__}: {exc}") from None

    def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
        """The VEK, chain and CRL of ``request``: from the cache directory where it has them
        (the CRL while its nextUpdate is ahead of ``clock``), else from the KDS.

        What is kept on disk (and served from it) must be AMD's answer to ``request``: its
        signatures lead to the pinned ARK of ``roots``, and it is the VEK asked for
        (:func:`check_collateral` without dates, as the DCAP source keeps Intel's answers:
        :mod:`confide.collateral.dcap`; the CAS keeps its VCEKs verified:
        :mod:`confide.cas.kds`). One answer that is not AMD's (a broken or hostile mirror, or
        one on the path of an ``http://`` URL), or AMD's for another chip, TCB, product or
        kind, was kept before: the VEK and chain for ever, a CRL until the nextUpdate it named
        itself, refusing every later verification of that chip (or product) from this cache.
        Such an answer is now returned, for the verifier to refuse with its own error, and not
        kept; cached files that do not verify (with what the KDS answers now) are fetched
        again."""
        if self.cache is None:
            return self._assemble(request, None, None, None)[0]
        vek, chain, crl = self._cached(request)
        collateral, fetched = self._assemble(request, vek, chain, crl)
        if self._verifies(request, collateral):
            self._keep(request, collateral, fetched)
            return collateral
        if vek is None and chain is None and crl is None:
            return collateral  # all of it from the KDS, and it does not verify: nothing kept
        # A cached file does not verify (with what the KDS answered): ask the KDS for all of it
        # (a VLEK only comes from the directory).
        collateral, fetched = self._assemble(
            request, vek if request.kind is VekKind.VLEK else None, None, None
        )
        if self._verifies(request, collateral):
            self._keep(request, collateral, fetched)
        return collateral

    def _cached(self, request: AmdCollateralRequest) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The cached VEK, chain and CRL (``None``: absent, unreadable, or a CRL that is due)."""
        assert self.cache is not None
        root = self.cache.root

        def read(rel: str) -> bytes | None:
            try:
                return read_file(root / rel)
            except ConfideError:  # a FIFO, too large, unreadable: fetched again and replaced
                return None

        prefix = request.product_dir()
        crl = read(f"{prefix}/crl.der") if self.with_crl else None
        if crl is not None and self._stale(crl):
            crl = None
        return read(request.vek_relpath()), read(f"{prefix}/cert_chain.pem"), crl

    def _assemble(
        self, request: AmdCollateralRequest, vek: bytes | None, chain: bytes | None, crl: bytes | None
    ) -> tuple[AmdCollateral, set[str]]:
        """``vek``, ``chain``, ``crl`` where given, the others from the KDS; and which of them
        (``"vek"``, ``"chain"``, ``"crl"``) came from the KDS."""
        fetched: set[str] = set()
        if vek is None:
            if request.kind is VekKind.VLEK:
                where = (
                    f": put the VLEK at {str(self.cache.root / request.vek_relpath())!r}"
                    if self.cache
                    else ""
                )
                raise CollateralMissingError(f"AMD KDS does not serve VLEKs by chip id{where}")
            vek = self._get(f"/{request.product_dir()}/{request.hwid}", request.query)
            certs = load_certificates(vek, "VCEK from AMD KDS")
            if len(certs) != 1:
                raise ParseError(f"got {len(certs)} certificates, expected 1", structure="VCEK from AMD KDS")
            fetched.add("vek")
        if chain is None:
            chain = self._get(f"/{request.product_dir()}/cert_chain")
            if len(load_certificates(chain, "cert_chain from AMD KDS")) != 2:
                raise ParseError("expected ASK/ASVK and ARK", structure="cert_chain from AMD KDS")
            fetched.add("chain")
        if self.with_crl and crl is None:
            try:
                crl = self._get(f"/{request.product_dir()}/crl")
            except CollateralMissingError:  # HTTP 404
                if self.crl_required:
                    raise
            else:
                self._parse_crl(crl)
                fetched.add("crl")
        return AmdCollateral(vek, chain, crl), fetched

    def _verifies(self, request: AmdCollateralRequest, collateral: AmdCollateral) -> bool:
        assert self.roots is not None
        try:
            check_collateral(request, collateral, self.roots, self.clock(), signatures_only=True)
        except ConfideError:
            return False
        return True

    def _keep(self, request: AmdCollateralRequest, collateral: AmdCollateral, fetched: set[str]) -> None:
        assert self.cache is not None
        prefix = request.product_dir()
        if "chain" in fetched:
            self.cache.store(f"{prefix}/cert_chain.pem", collateral.chain_pem)
        if "crl" in fetched and collateral.crl_der is not None:
            self.cache.store(f"{prefix}/crl.der", collateral.crl_der)
        if "vek" in fetched:
            self.cache.store(request.vek_relpath(), collateral.vek_der)

    @staticmethod
    def _parse_crl(data: bytes) -> x509.CertificateRevocationList:
        try:
            return check_crl_fields(x509.load_der_x509_crl(data))
        except CERTIFICATE_ERRORS as exc:
            raise ParseError(f"not a DER CRL: {exc}", structure="CRL from AMD KDS") from None

    def _stale(self, crl_der: bytes) -> bool:
        try:
            next_update = x509.load_der_x509_crl(crl_der).next_update_utc
        except CERTIFICATE_ERRORS:  # InvalidVersion (RFC 5280 §5.1.2.1) is not a ValueError
            return True
        return next_update is None or next_update <= self.clock()
