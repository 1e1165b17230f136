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
  the CRL until its ``nextUpdate``. The base URL and the HTTP transport are injectable; without
  a cache directory it asks the KDS every time (the CAS keeps a verified cache of its own:
  :mod:`confide.cas.kds`). Responses larger than :data:`MAX_RESPONSE_SIZE` are refused.

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
from confide.errors import CollateralMissingError, NetworkError, ParseError
from confide.evidence.sev_snp import AttestationReport, Product, SigningKey, TcbVersion
from confide.verify.sev_snp import VekKind, load_certificates
from confide.verify.x509util import CERTIFICATE_ERRORS, check_crl_fields

__all__ = [
    "DEFAULT_KDS_URL",
    "MAX_RESPONSE_SIZE",
    "AmdCollateral",
    "AmdCollateralRequest",
    "AmdCollateralSource",
    "KdsHttpCollateral",
    "LocalKdsCollateral",
]

DEFAULT_KDS_URL = "https://kdsintf.amd.com"
_HWID_SIZE_TURIN = 8
_HTTP_OK = 200
_HTTP_NOT_FOUND = 404
MAX_RESPONSE_SIZE = 1 << 20
"""The largest KDS response read (a VCEK is ~1.4 KB, the chain ~4 KB, AMD's CRL a few KB)."""


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


class AmdCollateralSource(Protocol):
    """Where AMD collateral comes from."""

    def fetch(self, request: AmdCollateralRequest) -> AmdCollateral: ...


class LocalKdsCollateral:
    """Collateral from a directory laid out like AMD KDS (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            where = str(self.root / rel)
            raise CollateralMissingError(f"cannot read {where!r}: {exc.strerror or exc}") from None

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
    decides whether a cached CRL is still fresh. ``with_crl``: ask for the CRL too;
    ``crl_required=False``: a KDS (mirror) that answers 404 for it gives no CRL instead of an
    error. VLEKs are not served by chip id: they must
    already be in the cache directory (put there by the operator).
    """

    def __init__(
        self,
        cache_dir: Path | None,
        *,
        base_url: str = DEFAULT_KDS_URL,
        transport: httpx2.BaseTransport | None = None,
        timeout: float = 10.0,
        with_crl: bool = True,
        crl_required: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cache = LocalKdsCollateral(cache_dir) if cache_dir is not None else None
        self.base_url = base_url.rstrip("/")
        self.with_crl = with_crl
        self.crl_required = crl_required
        self.clock = clock
        self._client = httpx2.Client(base_url=self.base_url, transport=transport, timeout=timeout)
        self.requests_made = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KdsHttpCollateral:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        self.requests_made += 1
        try:
            with self._client.stream("GET", path, params=params) as resp:
                if resp.status_code == _HTTP_NOT_FOUND:
                    raise CollateralMissingError(f"AMD KDS has no {path} (HTTP 404)")
                if resp.status_code != _HTTP_OK:
                    retry = resp.headers.get("retry-after")
                    raise NetworkError(
                        f"AMD KDS {path}: got HTTP {resp.status_code}, expected 200"
                        + (f" (retry after {retry[:20]} s)" if retry else "")
                    )
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_SIZE:
                        raise ParseError(
                            f"got more than {MAX_RESPONSE_SIZE} bytes", structure=f"AMD KDS {path}"
                        )
        except httpx2.HTTPError as exc:
            raise NetworkError(
                f"AMD KDS {public_url(self.base_url + path)}: {type(exc).__name__}: {exc}"
            ) from None
        return bytes(data)

    def _store(self, rel: str, data: bytes) -> None:
        if self.cache is not None:
            self.cache.store(rel, data)

    def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
        cache = self.cache
        vek = cache.vek(request) if cache is not None else None
        if vek is None:
            if request.kind is VekKind.VLEK:
                where = f": put the VLEK at {str(cache.root / request.vek_relpath())!r}" if cache else ""
                raise CollateralMissingError(f"AMD KDS does not serve VLEKs by chip id{where}")
            vek = self._get(f"/{request.product_dir()}/{request.hwid}", request.query)
            certs = load_certificates(vek, "VCEK from AMD KDS")
            if len(certs) != 1:
                raise ParseError(f"got {len(certs)} certificates, expected 1", structure="VCEK from AMD KDS")
            self._store(request.vek_relpath(), vek)
        chain = cache.chain(request) if cache is not None else None
        if chain is None:
            chain = self._get(f"/{request.product_dir()}/cert_chain")
            if len(load_certificates(chain, "cert_chain from AMD KDS")) != 2:
                raise ParseError("expected ASK/ASVK and ARK", structure="cert_chain from AMD KDS")
            self._store(f"{request.product_dir()}/cert_chain.pem", chain)
        crl: bytes | None = None
        if self.with_crl:
            crl = cache.crl(request) if cache is not None else None
            if crl is None or self._stale(crl):
                try:
                    fresh = self._get(f"/{request.product_dir()}/crl")
                except CollateralMissingError:  # HTTP 404
                    if self.crl_required:
                        raise
                    return AmdCollateral(vek, chain, None)
                self._parse_crl(fresh)
                self._store(f"{request.product_dir()}/crl.der", fresh)
                crl = fresh
        return AmdCollateral(vek, chain, crl)

    @staticmethod
    def _parse_crl(data: bytes) -> x509.CertificateRevocationList:
        try:
            return check_crl_fields(x509.load_der_x509_crl(data))
        except CERTIFICATE_ERRORS as exc:
            raise ParseError(f"not a DER CRL: {exc}", structure="CRL from AMD KDS") from None

    def _stale(self, crl_der: bytes) -> bool:
        try:
            next_update = x509.load_der_x509_crl(crl_der).next_update_utc
        except ValueError:
            return True
        return next_update is None or next_update <= self.clock()
