"""The VCEK of the CAS's own SEV-SNP evidence from AMD KDS (``cas serve --tee sev-snp --kds URL``).

configfs-tsm gives the VCEK with the report in its certificate table (``auxblob``) when the host
provides one (``SNP_SET_EXT_CONFIG``). On hosts whose table is empty, a client of the CAS could
not verify the CAS's own evidence (``confide cas attest`` fetches no VCEK). With ``--kds``, the
CAS then fetches its VCEK and the ASK/ARK chain through the same
:class:`~confide.cas.kds.KdsVcekCache` as the VCEKs of runtimes' evidence (verified under the
pinned AMD roots, with the ARK's CRL when the KDS serves one, and cached in
``DATA_DIR/kds-cache``), and publishes them in the document's ``auxblob``, as a certificate
table with the VCEK, ASK and ARK entries (AMD GHCB specification, "SNP Extended Guest
Request"): the form a host's table takes, read by clients as before, with no KDS access of
their own. When the KDS served the ARK's CRL (the one the CAS verified the VCEK's chain with),
the document also carries it, DER in base64, as ``amd_crl`` (:data:`AMD_CRL_FIELD`, a top-level
member: clients that do not know it ignore it, where an unknown ``aux`` key would be refused),
and ``confide cas attest`` checks the chain against it (:mod:`confide.cas.pin`). The CAS's
self-check then verifies that document as a client would (:mod:`confide.cas.self_check`).

Blocking: :func:`with_kds_vcek` may go to the network. It runs at startup, before the CAS
serves, and on a refresh in the refresher's thread (:class:`~confide.cas.periodic.PeriodicTask`),
never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from confide.cas.kds import KdsVcekCache, vek_request
from confide.errors import ConfideError, ParseError
from confide.evidence.snp_certs import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    build_cert_table,
    parse_cert_table,
)
from confide.verify.result import Platform

__all__ = ["AMD_CRL_FIELD", "with_kds_vcek"]

AMD_CRL_FIELD = "amd_crl"
"""The member of the CAS's evidence document with the AMD CRL (DER, base64) that the CAS
checked its own VCEK's chain with, when it fetched the VCEK from AMD KDS and the KDS served one."""


def with_kds_vcek(document: dict[str, Any], kds: KdsVcekCache, at: datetime) -> dict[str, Any]:
    """``document`` (the CAS's own, from :func:`~confide.cas.server.tee_document`) with its
    VCEK from ``kds`` in ``aux["auxblob"]`` when its SEV-SNP report came without a VCEK/VLEK;
    unchanged otherwise (another platform, or the host's table has one: nothing is fetched).
    Entries the host's table had are kept; the fetched ASK and ARK are added where it has none.
    The ARK's CRL the fetched chain was verified with, when the KDS served one, is added as
    :data:`AMD_CRL_FIELD`.
    Blocking (module docstring). Errors keep their class (a KDS that cannot be reached:
    :class:`~confide.errors.CollateralMissingError`; a VLEK-signed report or a masked chip id,
    for which the KDS cannot be asked, too; a VCEK that does not verify: the verification error)
    and say that the CAS's own VCEK was being fetched."""
    if document.get("platform") != Platform.SEV_SNP.value:
        return document
    try:
        aux = {str(k): base64.b64decode(v, validate=True) for k, v in document.get("aux", {}).items()}
        report = base64.b64decode(document["evidence"], validate=True)
    except (binascii.Error, ValueError, TypeError, KeyError, AttributeError):
        raise ParseError("the CAS's own evidence document is malformed", structure="CAS evidence") from None
    table = parse_cert_table(aux["auxblob"]) if aux.get("auxblob") else {}
    if "vcek" in aux or VCEK_GUID in table or VLEK_GUID in table:
        return document  # the host's certificate table has it: no KDS request
    try:
        fetched = kds.fetch(vek_request(report), at)
    except ConfideError as exc:  # the same class (exit code), saying what was fetched
        raise type(exc)(
            f"the CAS's own SEV-SNP report came without its VCEK (configfs-tsm's certificate table"
            f" has none) and --kds could not supply it: {exc.message}"
        ) from None
    der = Encoding.DER
    entries = {
        VCEK_GUID: fetched.vek.public_bytes(der),
        ASK_GUID: table.get(ASK_GUID) or fetched.chain.intermediate.public_bytes(der),
        ARK_GUID: table.get(ARK_GUID) or fetched.chain.ark.public_bytes(der),
    }
    entries.update((guid, cert) for guid, cert in table.items() if guid not in entries)
    try:
        aux["auxblob"] = build_cert_table(entries)
    except ValueError as exc:  # the host's table was full
        raise ParseError(str(exc), structure="snp_cert_table") from None
    encoded = {k: base64.b64encode(v).decode() for k, v in sorted(aux.items())}
    out = {**document, "aux": encoded}
    if fetched.crl is not None:
        out[AMD_CRL_FIELD] = base64.b64encode(fetched.crl.public_bytes(der)).decode()
    return out
