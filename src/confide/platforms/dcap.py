"""``confide evidence verify`` for Intel SGX and TDX quotes."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide.collateral.dcap import (
    PckCertificateSource,
    check_asked_evaluation,
    check_pcs_update,
    source_for,
)
from confide.errors import CollateralMissingError, ParseError, UsageError
from confide.evidence.dcap import Quote, TdReport
from confide.evidence.dcap_collateral import MAX_TCB_EVAL_NUMBERS_SIZE, DcapCollateral, PckCertificate
from confide.platforms.tdx_eventlog import load_event_log
from confide.verify.dcap import DcapVerifier, missing_pck_error
from confide.verify.eventlog import verify_event_log
from confide.verify.result import Platform, VerifiedEvidence
from confide.verify.x509util import CERTIFICATE_ERRORS, check_certificate_fields

from . import VerifyRequest, read_input_file

__all__ = [
    "COLLATERAL_ENV",
    "fetch_collateral",
    "request_collateral",
    "root_der",
    "verify_request",
]

_DEFAULT_VERIFIER = DcapVerifier()
COLLATERAL_ENV = "CONFIDE_DCAP_COLLATERAL"


def root_der(path: Path) -> bytes:
    """The DER of the one certificate (PEM or DER) in ``path`` (``--root``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--root: cannot read {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        return check_certificate_fields(cert).public_bytes(Encoding.DER)
    except CERTIFICATE_ERRORS:
        raise ParseError("not an X.509 certificate (PEM or DER)", structure="--root") from None


def fetch_collateral(
    verifier: DcapVerifier,
    quote: Quote,
    location: str | None,
    min_tcb_evaluation_data_number: int | None = None,
    tcb_evaluation_numbers: bool = False,
    tcb_recovery_grace: timedelta | None = None,
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
) -> tuple[DcapCollateral | None, PckCertificate | None]:
    """The collateral of ``quote`` from ``location`` (``--collateral``; ``None``: none), and for
    a quote whose certification data only names its PCK certificate (types 1-4) that
    certificate first: the platform's FMSPC and PCK CA, which the collateral is looked up by,
    are read from it once it chains to the pinned root. ``min_tcb_evaluation_data_number``
    (``--min-tcb-eval-number``): a URL source neither serves from its disk cache nor keeps
    collateral of an older TCB evaluation (:mod:`confide.collateral.dcap`). ``tcb_evaluation_numbers``:
    the collateral must also bring Intel's TCB evaluation data numbers (a directory or URL
    source; a bundle has none: :class:`CollateralMissingError`). ``pcs_update``
    (``--pcs-update``): the ``update`` a URL source asks for, ``pcs_tcb_eval_number``
    (``--pcs-tcb-eval-number``) the one TCB evaluation; with no location, or another, both, or
    the number below ``min_tcb_evaluation_data_number``, :class:`UsageError`."""
    check_pcs_update(location, pcs_update, pcs_tcb_eval_number, min_tcb_evaluation_data_number)
    if not location:
        return None, None
    source = source_for(
        location,
        min_tcb_evaluation_data_number=min_tcb_evaluation_data_number,
        tcb_evaluation_numbers=tcb_evaluation_numbers,
        tcb_recovery_grace=tcb_recovery_grace,
        pcs_update=pcs_update,
        pcs_tcb_eval_number=pcs_tcb_eval_number,
    )
    pck: PckCertificate | None = None
    cert_id = quote.pck_cert_id()
    if cert_id is not None:
        if not isinstance(source, PckCertificateSource):
            error = missing_pck_error(cert_id)
            error.message += f"; {location} is a collateral bundle, which carries none"
            error.args = (error.message,)
            raise error
        pck = source.get_pck_certificate(cert_id)
    chain = verifier.pck_chain(quote, pck)
    collateral = source.get_collateral(fmspc=chain.extension.fmspc, ca=chain.ca, tee=quote.tee)
    if tcb_evaluation_numbers and collateral.tcb_evaluation_numbers is None:
        raise CollateralMissingError(
            f"{location} is a collateral bundle (dcap-qvl layout), which has no TCB evaluation data "
            "numbers: give them with --tcb-eval-numbers FILE, or use a PCS directory or URL"
        )
    return collateral, pck


def request_collateral(
    verifier: DcapVerifier, quote: Quote, req: VerifyRequest
) -> tuple[DcapCollateral | None, PckCertificate | None]:
    """:func:`fetch_collateral` for ``evidence verify``'s options (SGX, TDX and the TD quote of
    Azure TDX vTPM evidence alike): the location ``--collateral`` (else
    ``$CONFIDE_DCAP_COLLATERAL``), ``--min-tcb-eval-number N``, and with ``auto`` Intel's TCB
    evaluation data numbers from ``--tcb-eval-numbers FILE`` (Intel PCS's answer: its issuer
    chain is taken to be the TCB Info's, which Intel PCS serves for both) or else from the
    directory or URL. ``--pcs-tcb-eval-number N`` with ``--tcb-eval-numbers FILE``: an ``N`` the
    file does not name, or below the minimum it sets at ``--at``, is refused before anything is
    asked for (:func:`~confide.collateral.dcap.check_asked_evaluation`)."""
    location = req.collateral_url or (
        str(req.collateral) if req.collateral else os.environ.get(COLLATERAL_ENV)
    )
    from_file = req.tcb_evaluation_numbers_file
    body: bytes | None = None
    if from_file is not None and req.pcs_tcb_eval_number is not None:
        check_pcs_update(
            location, req.pcs_update, req.pcs_tcb_eval_number, req.min_tcb_evaluation_data_number
        )
        body = _read_tcb_eval_numbers(from_file)
        check_asked_evaluation(
            req.pcs_tcb_eval_number,
            body,
            req.at,
            req.tcb_recovery_grace,
            tee=quote.tee.name,
            where=f"--tcb-eval-numbers {from_file}",
        )
    collateral, pck = fetch_collateral(
        verifier,
        quote,
        location,
        req.min_tcb_evaluation_data_number,
        tcb_evaluation_numbers=req.tcb_evaluation_numbers and from_file is None,
        tcb_recovery_grace=req.tcb_recovery_grace,
        pcs_update=req.pcs_update,
        pcs_tcb_eval_number=req.pcs_tcb_eval_number,
    )
    if from_file is not None and collateral is not None:
        if body is None:
            body = _read_tcb_eval_numbers(from_file)
        collateral = dataclasses.replace(collateral, tcb_evaluation_numbers=body)
    return collateral, pck


def _read_tcb_eval_numbers(path: Path) -> bytes:
    return read_input_file(
        path, "--tcb-eval-numbers", MAX_TCB_EVAL_NUMBERS_SIZE, "Intel PCS's TCB evaluation data numbers"
    )


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    quote = Quote.from_bytes(req.evidence)
    got = Platform.TDX if quote.is_tdx else Platform.SGX
    if got is not req.platform:
        raise ParseError(
            f"got a {got.value.upper()} quote, expected {req.platform.value.upper()}", structure="quote"
        )
    verifier = DcapVerifier(root_ca_der=root_der(req.root)) if req.root else _DEFAULT_VERIFIER
    collateral, pck = request_collateral(verifier, quote, req)
    result = verifier.verify_parsed(quote, req.evidence, collateral, at=req.at, pck=pck)
    if req.event_log is not None:
        if not isinstance(quote.report, TdReport):
            raise UsageError("--event-log: event-log replay applies to TDX quotes only")
        report = quote.report
        log = load_event_log(req.event_log)
        replayed = verify_event_log(log, [report.rtmr0, report.rtmr1, report.rtmr2, report.rtmr3])
        claims = dict(result.claims)
        claims["event_log"] = replayed.to_json()
        claims["kernel_cmdline"] = replayed.kernel_cmdline
        result = dataclasses.replace(result, claims=claims)
    return result
