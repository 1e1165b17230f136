"""CLI glue for ``confide evidence verify --platform nvidia-gpu``.

Reads the GPU's certificate chain (``--cert-chain``: a PEM bundle or concatenated DER, leaf
first; the CAS parses its ``aux["certs"]`` with the same function), an optional device root
override (``--root``, tests only), optional RIMs (``--collateral``: one ``.swidtag``/``.xml`` file
or a directory of them), an optional RIM root override (``--rim-root``, tests only) and an optional
OCSP source (``--ocsp``: a responder URL, or a directory of ``<serial hex>.der`` responses; see
:mod:`confide.collateral.nvidia_ocsp`), then calls :func:`confide.verify.nvidia.verify_nvidia_report`.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from confide.collateral import is_url
from confide.collateral.nvidia_ocsp import DirOcspSource, HttpOcspSource, fetch_all
from confide.errors import UsageError
from confide.evidence.nvidia_rim import MAX_RIM_SIZE, ReferenceManifest
from confide.platforms import MAX_CERTIFICATE_FILE, VerifyRequest, read_input_file
from confide.platforms._root import load_root_certificate
from confide.verify._pinned_chain import verify_pinned_chain
from confide.verify.nvidia import nvidia_device_root, ocsp_targets, verify_nvidia_report
from confide.verify.nvidia_rim import rim_ocsp_targets
from confide.verify.ocsp import OcspResponse
from confide.verify.result import VerifiedEvidence
from confide.verify.x509util import load_certificate_chain

__all__ = ["fetch_ocsp", "load_chain", "load_rims", "verify_request"]

RIM_SUFFIXES = (".swidtag", ".xml")
MAX_RIM_FILES = 16


def load_chain(path: Path, what: str) -> list[x509.Certificate]:
    return load_certificate_chain(
        read_input_file(path, what, MAX_CERTIFICATE_FILE, "a certificate chain"), f"{what} {str(path)!r}"
    )


def load_rims(path: Path) -> list[ReferenceManifest]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in RIM_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"--collateral: no *.swidtag or *.xml RIM in {str(path)!r}")
        if len(files) > MAX_RIM_FILES:
            raise UsageError(f"--collateral: got {len(files)} RIM files, expected at most {MAX_RIM_FILES}")
    else:
        files = [path]
    return [
        ReferenceManifest.from_bytes(read_input_file(f, "--collateral", MAX_RIM_SIZE, "an NVIDIA RIM"))
        for f in files
    ]


def fetch_ocsp(
    location: str, targets: list[list[tuple[x509.Certificate, x509.Certificate]]]
) -> list[list[OcspResponse]]:
    """For each list of (certificate, issuer) pairs, their OCSP responses from ``location``."""
    if is_url(location):
        with HttpOcspSource(location) as source:
            return [fetch_all(source, t) for t in targets]
    local = DirOcspSource(Path(location))
    return [fetch_all(local, t) for t in targets]


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    if req.cert_chain is None:
        raise UsageError("--platform nvidia-gpu needs --cert-chain FILE (PEM or DER chain, leaf first)")
    chain = load_chain(req.cert_chain, "--cert-chain")
    root = load_root_certificate(req.root, "--root") if req.root is not None else None
    rim_root = load_root_certificate(req.rim_root, "--rim-root") if req.rim_root is not None else None
    if req.collateral_url is not None:
        raise UsageError(
            "--collateral: RIMs are not fetched from NVIDIA's RIM service; give a RIM file or directory"
        )
    if rim_root is not None and req.collateral is None:
        raise UsageError("--rim-root is only meaningful with --collateral RIM(s)")
    rims = load_rims(req.collateral) if req.collateral is not None else []
    ocsp: list[OcspResponse] | None = None
    rim_ocsp: list[list[OcspResponse]] | None = None
    if req.ocsp is not None:
        # The GPU chain's links, then each RIM's signing chain. The GPU chain is checked first so
        # that a broken chain is reported as such (and no responder is asked about it); every
        # certificate is verified again by confide.verify before any response about it is used.
        verify_pinned_chain(chain, root if root is not None else nvidia_device_root(), req.at)
        targets = [ocsp_targets(chain), *(rim_ocsp_targets(rim.raw, rim_root) for rim in rims)]
        ocsp, *rim_ocsp = fetch_ocsp(req.ocsp, targets)
    return verify_nvidia_report(
        req.evidence, chain, at=req.at, expected_nonce=req.nonce, root=root, rims=rims, rim_root=rim_root,
        ocsp=ocsp, rim_ocsp=rim_ocsp,
    )  # fmt: skip
