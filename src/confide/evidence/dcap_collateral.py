"""Intel DCAP collateral: TCB Info, QE Identity, and the collateral bundle.

Formats from the Intel PCS API v4 documentation ("TCB Info V3" / "TCB Info V2" and
"Enclave Identity V2" response models). The JSON objects are parsed from the *exact* text that
Intel signed (``tcb_info_text``/``identity_text``), which is kept unchanged so that the
signature can be checked over it later; nothing here checks signatures.

Every value read from JSON is type- and range-checked; malformed input raises ParseError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confide import jsonstrict
from confide.errors import ParseError
from confide.evidence.pem import normalise_pem, parse_pem_chain, pem_chain

__all__ = [
    "DcapCollateral",
    "EnclaveIdentity",
    "IdentityTcbLevel",
    "PckCertificate",
    "TcbEvaluationNumbersText",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "split_pcs_response",
]

MAX_JSON_SIZE = 4 << 20
SVN_COMPONENTS = 16


def _perr(structure: str, message: str, field: str | None = None) -> ParseError:
    return ParseError(message, structure=structure, field=field)


def _get(obj: Any, key: str, kind: type | tuple[type, ...], structure: str, *, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise _perr(structure, f"got {type(obj).__name__}, expected an object", key)
    if key not in obj:
        if optional:
            return None
        raise _perr(structure, "missing", key)
    value = obj[key]
    if isinstance(value, bool) and kind is not bool:
        raise _perr(structure, f"got a boolean, expected {kind}", key)
    if not isinstance(value, kind):
        raise _perr(structure, f"got {type(value).__name__}, expected {kind}", key)
    return value


def _int(obj: Any, key: str, structure: str, hi: int = 0xFFFF) -> int:
    value: int = _get(obj, key, int, structure)
    if not 0 <= value <= hi:
        raise _perr(structure, f"got {value}, expected 0..{hi}", key)
    return value


def _hex(obj: Any, key: str, size: int, structure: str) -> bytes:
    text: str = _get(obj, key, str, structure)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _perr(structure, f"got {text[:40]!r}, expected hex", key) from None
    if len(raw) != size or len(text) != 2 * size:
        raise _perr(structure, f"got {len(text)} hex digits, expected {2 * size}", key)
    return raw


def _time(obj: Any, key: str, structure: str) -> datetime:
    text: str = _get(obj, key, str, structure)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _perr(structure, f"got {text[:40]!r}, expected an ISO 8601 time", key) from None
    if value.tzinfo is None:
        raise _perr(structure, f"got {text!r}, expected a time with a zone (Z)", key)
    return value


def _strings(obj: Any, key: str, structure: str) -> tuple[str, ...]:
    value = _get(obj, key, list, structure, optional=True)
    if value is None:
        return ()
    if not all(isinstance(v, str) and len(v) < 64 for v in value):
        raise _perr(structure, "expected a list of short strings", key)
    return tuple(value)


def _loads(text: bytes, structure: str) -> Any:
    if len(text) > MAX_JSON_SIZE:
        raise _perr(structure, f"got {len(text)} bytes, expected at most {MAX_JSON_SIZE}")
    # strict (confide.jsonstrict): a TCB Info or QE Identity giving a key twice is refused here,
    # before its signature is checked, whatever the signed bytes say
    return jsonstrict.loads(text, structure=structure)


_STATUSES = {
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
}


def _status(obj: Any, structure: str) -> str:
    value: str = _get(obj, "tcbStatus", str, structure)
    if value not in _STATUSES:
        raise _perr(structure, f"got {value!r}, expected one of {sorted(_STATUSES)}", "tcbStatus")
    return value


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdentityTcbLevel:
    isv_svn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[IdentityTcbLevel, ...]


def _identity_levels(raw: Any, structure: str) -> tuple[IdentityTcbLevel, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > 1024:
        raise _perr(structure, "expected a non-empty list", "tcbLevels")
    out = []
    for lvl in raw:
        tcb = _get(lvl, "tcb", dict, structure)
        out.append(
            IdentityTcbLevel(
                isv_svn=_int(tcb, "isvsvn", structure),
                tcb_date=_time(lvl, "tcbDate", structure),
                status=_status(lvl, structure),
                advisory_ids=_strings(lvl, "advisoryIDs", structure),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TcbInfo:
    """TCB Info v2 (SGX) or v3 (SGX and TDX), from the exact signed JSON text."""

    text: bytes
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tcb_levels: tuple[TcbLevel, ...]
    tdx_module_mr_signer: bytes | None
    tdx_module_attributes: bytes | None
    tdx_module_attributes_mask: bytes | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]

    @classmethod
    def from_json_text(cls, text: bytes) -> TcbInfo:
        s = "tcb_info"
        obj = _loads(text, s)
        version = _int(obj, "version", s)
        if version not in (2, 3):
            raise _perr(s, f"got version {version}, expected 2 or 3", "version")
        tcb_id = "SGX" if version == 2 else _get(obj, "id", str, s)
        if tcb_id not in ("SGX", "TDX"):
            raise _perr(s, f"got id {tcb_id!r}, expected SGX or TDX", "id")
        tcb_type = _int(obj, "tcbType", s)
        if tcb_type != 0:
            raise _perr(s, f"got tcbType {tcb_type}, expected 0", "tcbType")
        raw_levels = _get(obj, "tcbLevels", list, s)
        if not raw_levels or len(raw_levels) > 1024:
            raise _perr(s, "expected 1..1024 TCB levels", "tcbLevels")
        levels = []
        for lvl in raw_levels:
            tcb = _get(lvl, "tcb", dict, s)
            tdx: tuple[int, ...] | None = None
            if version == 2:
                sgx = tuple(_int(tcb, f"sgxtcbcomp{i:02d}svn", s, 0xFF) for i in range(1, SVN_COMPONENTS + 1))
            else:
                sgx = cls._components(tcb, "sgxtcbcomponents", s)
                if tcb_id == "TDX":
                    tdx = cls._components(tcb, "tdxtcbcomponents", s)
            levels.append(
                TcbLevel(
                    sgx_components=sgx,
                    pce_svn=_int(tcb, "pcesvn", s),
                    tdx_components=tdx,
                    tcb_date=_time(lvl, "tcbDate", s),
                    status=_status(lvl, s),
                    advisory_ids=_strings(lvl, "advisoryIDs", s),
                )
            )
        mod_signer = mod_attr = mod_mask = None
        identities: list[TdxModuleIdentity] = []
        if tcb_id == "TDX":
            module = _get(obj, "tdxModule", dict, s)
            mod_signer = _hex(module, "mrsigner", 48, s)
            mod_attr = _hex(module, "attributes", 8, s)
            mod_mask = _hex(module, "attributesMask", 8, s)
            for ident in _get(obj, "tdxModuleIdentities", list, s, optional=True) or []:
                identities.append(
                    TdxModuleIdentity(
                        id=_get(ident, "id", str, s),
                        mr_signer=_hex(ident, "mrsigner", 48, s),
                        attributes=_hex(ident, "attributes", 8, s),
                        attributes_mask=_hex(ident, "attributesMask", 8, s),
                        tcb_levels=_identity_levels(_get(ident, "tcbLevels", list, s), s),
                    )
                )
        return cls(
            text=text,
            id=tcb_id,
            version=version,
            issue_date=_time(obj, "issueDate", s),
            next_update=_time(obj, "nextUpdate", s),
            fmspc=_hex(obj, "fmspc", 6, s),
            pce_id=_hex(obj, "pceId", 2, s),
            tcb_type=tcb_type,
            tcb_evaluation_data_number=_int(obj, "tcbEvaluationDataNumber", s, 0xFFFFFFFF),
            tcb_levels=tuple(levels),
            tdx_module_mr_signer=mod_signer,
            tdx_module_attributes=mod_attr,
            tdx_module_attributes_mask=mod_mask,
            tdx_module_identities=tuple(identities),
        )

    @staticmethod
    def _components(tcb: Any, key: str, s: str) -> tuple[int, ...]:
        comps = _get(tcb, key, list, s)
        if len(comps) != SVN_COMPONENTS:
            raise _perr(s, f"got {len(comps)} components, expected {SVN_COMPONENTS}", key)
        return tuple(_int(c, "svn", s, 0xFF) for c in comps)


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    """QE / TD_QE identity (Enclave Identity V2), from the exact signed JSON text."""

    text: bytes
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[IdentityTcbLevel, ...]

    @classmethod
    def from_json_text(cls, text: bytes) -> EnclaveIdentity:
        s = "qe_identity"
        obj = _loads(text, s)
        version = _int(obj, "version", s)
        if version != 2:
            raise _perr(s, f"got version {version}, expected 2", "version")
        ident = _get(obj, "id", str, s)
        if ident not in ("QE", "TD_QE", "QVE"):
            raise _perr(s, f"got id {ident!r}, expected QE or TD_QE", "id")
        return cls(
            text=text,
            id=ident,
            version=version,
            issue_date=_time(obj, "issueDate", s),
            next_update=_time(obj, "nextUpdate", s),
            tcb_evaluation_data_number=_int(obj, "tcbEvaluationDataNumber", s, 0xFFFFFFFF),
            # The hex is MISCSELECT's 4 bytes as the report holds them (a little-endian u32):
            # Intel's QVL reads it so (EnclaveReportVerifier::vectorToUint32, a byte swap of the
            # big-endian reading; 4.1.2.9.5), and so does dcap-qvl.
            miscselect=int.from_bytes(_hex(obj, "miscselect", 4, s), "little"),
            miscselect_mask=int.from_bytes(_hex(obj, "miscselectMask", 4, s), "little"),
            attributes=_hex(obj, "attributes", 16, s),
            attributes_mask=_hex(obj, "attributesMask", 16, s),
            mr_signer=_hex(obj, "mrsigner", 32, s),
            isv_prod_id=_int(obj, "isvprodid", s),
            tcb_levels=_identity_levels(_get(obj, "tcbLevels", list, s), s),
        )


MAX_TCB_EVAL_NUMBERS_SIZE = 64 << 10
"""The largest TCB evaluation data numbers response read: Intel's lists are about 1 KiB (eight
entries in 2025, two added a year); 64 KiB is some hundreds of entries."""
MAX_TCB_EVAL_NUMBERS = 256


@dataclass(frozen=True, slots=True)
class TcbEvaluationNumbersText:
    """Intel PCS API v4 "TCB Evaluation Data Numbers" model v1 (``GET
    /{sgx,tdx}/certification/v4/tcbevaluationdatanumbers``), parsed from the exact signed text
    of the response's ``tcbEvaluationDataNumbers`` member; nothing verified. ``numbers``: (
    ``tcbEvaluationDataNumber``, ``tcbRecoveryEventDate``, ``tcbDate``), highest number first
    (sorted here; numbers are unique)."""

    text: bytes
    signature: bytes
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    numbers: tuple[tuple[int, datetime, datetime], ...]

    KEY = "tcbEvaluationDataNumbers"

    @classmethod
    def from_response(cls, body: bytes) -> TcbEvaluationNumbersText:
        """From the whole response ``{"tcbEvaluationDataNumbers":{...},"signature":"<hex>"}``
        (at most :data:`MAX_TCB_EVAL_NUMBERS_SIZE` bytes, strict JSON: a key given twice is
        refused)."""
        s = "tcb_evaluation_data_numbers"
        if len(body) > MAX_TCB_EVAL_NUMBERS_SIZE:
            raise _perr(s, f"got {len(body)} bytes, expected at most {MAX_TCB_EVAL_NUMBERS_SIZE}")
        text, sig = split_pcs_response(body, cls.KEY)
        if len(sig) != 64:
            raise _perr(s, f"got a {len(sig)}-byte signature, expected 64 (r||s, P-256)", "signature")
        obj = _loads(text, s)
        tee_id = _get(obj, "id", str, s)
        if tee_id not in ("SGX", "TDX"):
            raise _perr(s, f"got id {tee_id[:16]!r}, expected SGX or TDX", "id")
        version = _int(obj, "version", s)
        if version != 1:
            raise _perr(s, f"got version {version}, expected 1", "version")
        raw = _get(obj, "tcbEvalNumbers", list, s)
        if not raw or len(raw) > MAX_TCB_EVAL_NUMBERS:
            raise _perr(s, f"got {len(raw)} entries, expected 1..{MAX_TCB_EVAL_NUMBERS}", "tcbEvalNumbers")
        entries = []
        for item in raw:
            entries.append(
                (
                    _int(item, "tcbEvaluationDataNumber", s, 0xFFFF_FFFF),
                    _time(item, "tcbRecoveryEventDate", s),
                    _time(item, "tcbDate", s),
                )
            )
        if len({n for n, _, _ in entries}) != len(entries):
            raise _perr(s, "a tcbEvaluationDataNumber is given twice", "tcbEvalNumbers")
        return cls(
            text=text,
            signature=sig,
            id=tee_id,
            version=version,
            issue_date=_time(obj, "issueDate", s),
            next_update=_time(obj, "nextUpdate", s),
            numbers=tuple(sorted(entries, key=lambda e: e[0], reverse=True)),
        )


def split_pcs_response(body: bytes, key: str) -> tuple[bytes, bytes]:
    """Split an Intel PCS response ``{"<key>":<X>,"signature":"<hex>"}`` into the exact text
    of ``<X>`` (what Intel signed) and the raw signature bytes.

    The signed text must be cut out of the response byte for byte: re-serialising the parsed
    JSON would change it and break the signature (Intel PCS API v4, "TCB Info" notes).
    """
    structure = f"pcs_response.{key}"
    obj = _loads(body, structure)
    sig_hex = _get(obj, "signature", str, structure)
    _get(obj, key, dict, structure)
    prefix = b'{"' + key.encode() + b'":'
    stripped = body.strip()
    marker = b',"signature":"'
    cut = stripped.rfind(marker)
    if not stripped.startswith(prefix) or cut < 0 or not stripped.endswith(b'"}'):
        raise _perr(structure, f'expected the PCS layout {{"{key}":...,"signature":"..."}}')
    text = stripped[len(prefix) : cut]
    if stripped[cut + len(marker) : -2].decode("ascii", "replace") != sig_hex:
        raise _perr(structure, "signature is not the last member")
    try:
        signed = jsonstrict.loads(text, structure=structure)
    except ParseError:
        signed = None
    if signed != obj[key]:
        raise _perr(structure, "could not isolate the signed text")
    try:
        sig = bytes.fromhex(sig_hex)
    except ValueError:
        raise _perr(structure, "signature is not hex", "signature") from None
    return text, sig


@dataclass(frozen=True, slots=True)
class DcapCollateral:
    """The verification collateral of one quote, as received (nothing verified yet).

    Certificates are DER, leaf first; ``tcb_info`` and ``qe_identity`` are the exact signed
    JSON texts; signatures are raw r||s (64 bytes).
    """

    pck_crl_issuer_chain: tuple[bytes, ...]
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: tuple[bytes, ...]
    tcb_info: bytes
    tcb_info_signature: bytes
    qe_identity_issuer_chain: tuple[bytes, ...]
    qe_identity: bytes
    qe_identity_signature: bytes
    tcb_evaluation_numbers: bytes | None = None
    """Optional (``--min-tcb-eval-number auto``): Intel PCS's whole answer to ``GET
    /{sgx,tdx}/certification/v4/tcbevaluationdatanumbers``; verified with the collateral when
    present (:meth:`~confide.verify.dcap.DcapVerifier.verify_tcb_evaluation_numbers`). Not part
    of the dcap-qvl layout."""
    tcb_evaluation_numbers_issuer_chain: tuple[bytes, ...] = ()
    """Its issuer chain (``TCB-Evaluation-Data-Numbers-Issuer-Chain``: the TCB Info's)."""

    @classmethod
    def from_dcap_qvl_json(cls, text: bytes) -> DcapCollateral:
        """Read dcap-qvl's ``QuoteCollateralV3`` JSON layout (CRLs and signatures as hex,
        issuer chains as PEM, TCB Info and QE Identity as the exact signed text)."""
        s = "collateral_bundle"
        obj = _loads(text, s)

        def hexfield(key: str) -> bytes:
            value: str = _get(obj, key, str, s)
            try:
                return bytes.fromhex(value)
            except ValueError:
                raise _perr(s, "expected hex", key) from None

        def chain(key: str) -> tuple[bytes, ...]:
            value: str = _get(obj, key, str, s)
            return tuple(
                parse_pem_chain(normalise_pem(value.encode(), structure=f"{s}.{key}"), structure=f"{s}.{key}")
            )

        return cls(
            pck_crl_issuer_chain=chain("pck_crl_issuer_chain"),
            root_ca_crl=hexfield("root_ca_crl"),
            pck_crl=hexfield("pck_crl"),
            tcb_info_issuer_chain=chain("tcb_info_issuer_chain"),
            tcb_info=_get(obj, "tcb_info", str, s).encode(),
            tcb_info_signature=hexfield("tcb_info_signature"),
            qe_identity_issuer_chain=chain("qe_identity_issuer_chain"),
            qe_identity=_get(obj, "qe_identity", str, s).encode(),
            qe_identity_signature=hexfield("qe_identity_signature"),
        )

    def to_dcap_qvl_json(self) -> str:
        return json.dumps(
            {
                "pck_crl_issuer_chain": pem_chain(self.pck_crl_issuer_chain),
                "root_ca_crl": self.root_ca_crl.hex(),
                "pck_crl": self.pck_crl.hex(),
                "tcb_info_issuer_chain": pem_chain(self.tcb_info_issuer_chain),
                "tcb_info": self.tcb_info.decode(),
                "tcb_info_signature": self.tcb_info_signature.hex(),
                "qe_identity_issuer_chain": pem_chain(self.qe_identity_issuer_chain),
                "qe_identity": self.qe_identity.decode(),
                "qe_identity_signature": self.qe_identity_signature.hex(),
            }
        )


PCK_CHAIN_LENGTH = 3  # leaf, PCK Platform/Processor CA, Intel SGX Root CA


@dataclass(frozen=True, slots=True)
class PckCertificate:
    """A platform's PCK certificate as collateral, as received (nothing verified yet): for quotes
    whose certification data names the certificate instead of carrying it (types 1-4,
    :class:`~confide.evidence.dcap.PckCertId`). ``leaf`` is DER; ``issuer_chain`` the PCK
    Platform or Processor CA then the Intel SGX Root CA (DER).

    Intel PCS API v4 "Get PCK Certificate V4" (and a PCCS's ``/sgx/certification/v4/pckcert``)
    answers the leaf as PEM in the body and the issuer chain URL-encoded in the
    ``SGX-PCK-Certificate-Issuer-Chain`` header (:meth:`from_pem`). The ``SGX-TCBm``,
    ``SGX-FMSPC`` and ``SGX-PCK-Certificate-CA-Type`` headers repeat what the certificate's own
    SGX extension and issuer say; the verifier reads those from the certificate."""

    leaf: bytes
    issuer_chain: tuple[bytes, ...]

    @classmethod
    def from_pem(
        cls, leaf_pem: bytes, chain_pem: bytes, *, structure: str = "pck_certificate"
    ) -> PckCertificate:
        """The leaf (one PEM certificate) and its issuer chain (PEM, CA then root), re-flowed
        from HTTP transport; a leaf given with its whole chain (three certificates) is taken
        too. Hostile input: anything else is a ParseError."""
        leaf = parse_pem_chain(normalise_pem(leaf_pem, structure=structure), structure=structure)
        if len(leaf) == PCK_CHAIN_LENGTH and not chain_pem.strip():
            return cls(leaf[0], tuple(leaf[1:]))
        if len(leaf) != 1:
            raise _perr(structure, f"got {len(leaf)} certificates, expected the PCK leaf alone")
        what = f"{structure}.issuer_chain"
        chain = parse_pem_chain(normalise_pem(chain_pem, structure=what), structure=what)
        if len(chain) != PCK_CHAIN_LENGTH - 1:
            raise _perr(what, f"got {len(chain)} certificates, expected the PCK CA and the root")
        return cls(leaf[0], tuple(chain))

    def to_pem(self) -> str:
        """Leaf, CA and root as one PEM text (the form :meth:`from_pem` reads back)."""
        return pem_chain((self.leaf, *self.issuer_chain))
