"""Evidence from a Google Compute Engine Shielded or Confidential VM's vTPM: :class:`GceTpmQuoteProvider`.

What go-tpm-tools does for ``gotpm attest`` (``client.GceAttestationKeyRSA`` / ``...ECC`` and
``Key.Attest``), with the report data as the quote's qualifying data:

1. Read the AK certificate Google provisioned in the vTPM's NV index ``0x01C10000`` (RSA AK)
   or, without it, ``0x01C10002`` (ECC AK) (go-tpm-tools ``client/handles.go``,
   ``GceAKCertNVIndexRSA`` / ``...ECC``), and the AK template from ``0x01C10001`` /
   ``0x01C10003`` (``GceAKTemplateNVIndexRSA`` / ``...ECC``). Neither index: not a GCE VM
   (:class:`~confide.errors.UsageError`).
2. Create the AK: ``TPM2_CreatePrimary`` of that template in the endorsement hierarchy. A
   primary key derives from the hierarchy's seed and the template, so it is the key the
   certificate names (checked: :class:`~confide.errors.BindingError` otherwise).
3. ``TPM2_Quote`` all 24 SHA-256 PCRs with the AK and qualifyingData = the 64-byte report data,
   then read the PCR values; the quote is verified with the verifier's own
   :func:`confide.verify.tpm.verify_quote` (signature, TPM-generated, pcrDigest over the values
   read, extraData the report data). A PCR extended between the quote and the read means quote
   again (at most three times).
4. Read the firmware's event log (``/sys/kernel/security/tpm0/binary_bios_measurements``; none
   when the file does not exist) and replay it as the verifier does
   (:func:`confide.verify.gce_tpm.replay_pcrs`): it must reproduce the quoted PCRs it extends
   (an event logged after the quote means quote again), else
   :class:`~confide.errors.MeasurementError` (the verifier would refuse it too).
5. Flush the AK, and encode go-tpm-tools' ``attest.Attestation`` protobuf (the schema in
   :mod:`confide.evidence.gce_tpm`): ``ak_pub`` (TPMT_PUBLIC), one quote (TPMS_ATTEST, TPMT_SIGNATURE,
   the SHA-256 PCRs), ``event_log``, ``ak_cert`` and ``intermediate_certs``. The result is
   parsed with the verifier's own parser before it is returned.

6. On a Confidential VM (``tee``: the configfs-tsm provider, ``confide run --gce-tee``): the
   SEV-SNP report or TDX quote for the same 64-byte report data (go-tpm-tools' TEENonce, which
   the verifier requires to be the quotes' extraData zero-filled to 64 bytes: here both are the
   report data), collected through configfs-tsm after the quote, and sent structured as
   go-tpm-tools does: field 8, a go-sev-guest ``sevsnp.Attestation`` (with the VCEK/VLEK, ASK
   and ARK of configfs-tsm's certificate table, when the host provides one), or field 9, a
   go-tdx-guest ``tdx.QuoteV4`` (:mod:`confide.evidence.gce_tee`). A report the structured
   protobuf cannot carry byte for byte (non-zero reserved bytes), or that configfs-tsm fails to
   give, is an error: the evidence is not sent without it.

7. With an ``issuer_fetcher`` (``confide run`` gives :class:`~confide.runtime.gce_aia.HttpIssuerFetcher`):
   the AK certificate's issuing CAs are collected from their AIA caIssuers URLs up to one signed
   by a pinned Google root (:mod:`confide.runtime.gce_aia`: http/https only, bounded in size,
   time and hops, each checked to have signed the one below) and sent in field 7 after
   ``intermediates``, as go-tpm-tools does, unless the intermediates given and those confide
   ships (``google_vtpm_intermediates.pem``, which the verifier has too) already chain the AK
   certificate to a pinned root: then nothing is fetched (a VM without a route to pki.goog does
   not wait on it). Collected once per AK certificate and kept for the provider's life; a
   failure is an error.

Not done (``docs/limitations.md``, "GCE vTPM"): the unsigned ``instance_info`` from the metadata
server is not sent, and a Confidential VM's report is collected through configfs-tsm only (not
the older ``/dev/sev-guest`` / ``/dev/tdx_guest`` ioctls go-tpm-tools uses).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.errors import BindingError, MeasurementError, ParseError, StorageError, UsageError
from confide.evidence._protobuf import encode_field
from confide.evidence.ccel import EventLog
from confide.evidence.gce_tee import encode_sev_snp_attestation, encode_tdx_quote
from confide.evidence.gce_tpm import MAX_ATTESTATION_SIZE, parse_gce_attestation
from confide.evidence.snp_certs import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, parse_cert_table
from confide.evidence.tpm import TPM_ALG_SHA256, TpmPublic, parse_attest
from confide.runtime.gce_aia import MAX_HOPS, IssuerFetcher, collect_issuers, signed_by_one_of
from confide.runtime.quote import ConfigfsTsmQuoteProvider, Evidence, check_report_data
from confide.runtime.tpm import (
    PCR_COUNT,
    TPM_RH_ENDORSEMENT,
    DeviceTransport,
    Tpm,
    TpmCommandError,
)
from confide.verify.gce_tpm import google_roots, long_names, replay_pcrs, shipped_intermediates
from confide.verify.result import Platform
from confide.verify.tpm import verify_quote
from confide.verify.x509util import load_der_certificate

__all__ = [
    "AK_CERT_NV_INDEX_ECC",
    "AK_CERT_NV_INDEX_RSA",
    "AK_TEMPLATE_NV_INDEX_ECC",
    "AK_TEMPLATE_NV_INDEX_RSA",
    "DEFAULT_EVENT_LOG",
    "GceTpmQuoteProvider",
    "encode_attestation",
]


# go-tpm-tools client/handles.go
AK_CERT_NV_INDEX_RSA = 0x01C10000
AK_TEMPLATE_NV_INDEX_RSA = 0x01C10001
AK_CERT_NV_INDEX_ECC = 0x01C10002
AK_TEMPLATE_NV_INDEX_ECC = 0x01C10003
_AK_KINDS = (
    ("rsa", AK_CERT_NV_INDEX_RSA, AK_TEMPLATE_NV_INDEX_RSA),
    ("ecc", AK_CERT_NV_INDEX_ECC, AK_TEMPLATE_NV_INDEX_ECC),
)
DEFAULT_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
MAX_EVENT_LOG = MAX_ATTESTATION_SIZE - 64 * 1024
"""The largest event log read (bytes): what leaves room in the attestation for the rest."""
_PCR_INDICES = tuple(range(PCR_COUNT))
_SELECTION = tuple((TPM_ALG_SHA256, i) for i in _PCR_INDICES)
_QUOTE_ATTEMPTS = 3


def encode_attestation(
    *,
    ak_pub: bytes,
    quote: bytes,
    signature: bytes,
    pcrs: Sequence[bytes],
    event_log: bytes,
    ak_cert: bytes,
    intermediates: Sequence[bytes] = (),
) -> bytes:
    """go-tpm-tools ``attest.Attestation`` with one SHA-256 quote (``tpm.Quote``: ``quote`` = the
    TPMS_ATTEST, ``raw_sig`` = the TPMT_SIGNATURE, ``pcrs`` = ``tpm.PCRs`` {hash 11 = SHA256, map
    index → value}); fields in number order, as protobuf encoders write them."""
    entries = b"".join(encode_field(2, encode_field(1, i) + encode_field(2, v)) for i, v in enumerate(pcrs))
    pcr_msg = encode_field(1, TPM_ALG_SHA256) + entries
    quote_msg = encode_field(1, quote) + encode_field(2, signature) + encode_field(3, pcr_msg)
    out = encode_field(1, ak_pub) + encode_field(2, quote_msg)
    if event_log:
        out += encode_field(3, event_log)
    out += encode_field(6, ak_cert)
    out += b"".join(encode_field(7, c) for c in intermediates)
    return out


# --- the provider ----------------------------------------------------------------------------------


def _der_certificate(data: bytes, index: int) -> bytes:
    """The DER certificate at the start of an NV index's content: NV indices are often larger
    than the certificate, the rest zero (anything else after it: ParseError)."""
    structure = f"AK certificate in NV index {index:#010x}"
    if len(data) < 4 or data[0] != 0x30:
        raise ParseError("not a DER certificate (no SEQUENCE)", structure=structure)
    first = data[1]
    if first < 0x80:
        end = 2 + first
    else:
        count = first & 0x7F
        if not 1 <= count <= 3 or len(data) < 2 + count:
            raise ParseError("not a DER certificate (length)", structure=structure)
        end = 2 + count + int.from_bytes(data[2 : 2 + count], "big")
    if end > len(data) or any(data[end:]):
        raise ParseError(
            f"the certificate's DER length says {end} bytes, the index holds {len(data)}"
            " (anything after it must be zero padding)",
            structure=structure,
        )
    der = data[:end]
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ParseError(f"not a DER certificate: {exc}", structure=structure) from None
    return der


def _key_der(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:  # pragma: no cover - TpmPublic.public_key returns RSA/EC keys
        raise TypeError("not a public key")
    der: bytes = public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


class GceTpmQuoteProvider:
    """Evidence from a GCE VM's vTPM (see the module docstring). ``tpm``: the vTPM (default
    ``/dev/tpmrm0``); ``event_log``: the firmware event log's path (``None``: send none);
    ``intermediates``: DER certificates sent with the AK certificate (its issuing intermediate
    when the verifier does not ship it); ``tee``: a Confidential VM's configfs-tsm, whose SEV-SNP
    report or TDX quote goes into field 8 or 9 (step 6; ``None``: the vTPM quote alone);
    ``issuer_fetcher``: what fetches the AK certificate's issuers from their caIssuers URLs (step
    7; ``None``: none is fetched); ``roots``: where that collection stops (default: the pinned
    Google roots the verifier uses)."""

    def __init__(
        self,
        tpm: Tpm | None = None,
        *,
        event_log: Path | None = DEFAULT_EVENT_LOG,
        intermediates: Sequence[bytes] = (),
        tee: ConfigfsTsmQuoteProvider | None = None,
        issuer_fetcher: IssuerFetcher | None = None,
        roots: Sequence[x509.Certificate] | None = None,
    ) -> None:
        self._tpm = tpm
        self._event_log = event_log
        self._intermediates = tuple(intermediates)
        self._tee = tee
        self._fetcher = issuer_fetcher
        self._roots = tuple(roots) if roots is not None else None
        self._fetched: dict[bytes, tuple[bytes, ...]] = {}
        # One request at a time: a quote and its PCR read must not interleave with another's.
        self._lock = threading.Lock()

    def _device(self) -> Tpm:
        if self._tpm is None:
            self._tpm = Tpm(DeviceTransport())
        return self._tpm

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        with self._lock:
            tpm = self._device()
            kind, cert, template = self._ak_material(tpm)
            handle, ak = tpm.create_primary(TPM_RH_ENDORSEMENT, template)
            try:
                cert_key = _der_key_of(cert)
                if not hmac.compare_digest(cert_key, _key_der(ak.public_key())):
                    raise BindingError(
                        f"the AK created from the template in NV index {_template_index(kind):#010x} is not"
                        " the key of the AK certificate: the certificate does not vouch for its quotes"
                    )
                quote, signature, pcrs, log = self._quote(tpm, handle, ak, report_data)
            finally:
                tpm.flush_context(handle)
        intermediates = self._intermediates
        intermediates += tuple(c for c in self._issuers(cert) if c not in intermediates)
        raw = encode_attestation(
            ak_pub=ak.raw,
            quote=quote,
            signature=signature,
            pcrs=pcrs,
            event_log=log,
            ak_cert=cert,
            intermediates=intermediates,
        )
        provider = f"gce-tpm/{kind}"
        if self._tee is not None:
            field, tee_provider = self._tee_field(self._tee, report_data)
            raw += field
            provider += f"+{tee_provider}"
        parse_gce_attestation(raw)  # the verifier's parser: what is sent is well-formed
        return Evidence(platform=Platform.GCE_TPM, raw=raw, provider=provider)

    def _issuers(self, cert: bytes) -> tuple[bytes, ...]:
        """Step 7: the AK certificate's issuers from its caIssuers URLs (kept once collected)."""
        if self._fetcher is None:
            return ()
        kept = self._fetched.get(cert)
        if kept is not None:
            return kept
        with long_names():
            leaf = load_der_certificate(cert, "AK certificate")  # names read now, not mid-collection
        roots = self._roots if self._roots is not None else google_roots()
        given = [x509.load_der_x509_certificate(c) for c in self._intermediates]
        with long_names():
            chained = _chains(leaf, [*given, *shipped_intermediates()], roots)
        if chained:
            # The intermediates given and those confide ships (the verifier's too) already chain
            # it: nothing to fetch (a VM without a route to pki.goog does not wait on it).
            self._fetched[cert] = ()
            return ()
        with long_names():  # Google's intermediates' CNs are longer than X.520's 64
            collected = tuple(collect_issuers(leaf, self._fetcher, roots))
        self._fetched[cert] = collected
        return collected

    @staticmethod
    def _tee_field(tee: ConfigfsTsmQuoteProvider, report_data: bytes) -> tuple[bytes, str]:
        """Step 6: field 8 or 9, and where the report came from. configfs-tsm checks that the
        report carries ``report_data``."""
        evidence = tee.get_evidence(report_data)
        if evidence.platform is Platform.SEV_SNP:
            table = evidence.aux.get("auxblob")
            certs = parse_cert_table(table) if table else {}
            pb = encode_sev_snp_attestation(
                evidence.raw,
                vcek=certs.get(VCEK_GUID),
                vlek=certs.get(VLEK_GUID),
                ask=certs.get(ASK_GUID),
                ark=certs.get(ARK_GUID),
            )
            return encode_field(8, pb), evidence.provider
        return encode_field(9, encode_tdx_quote(evidence.raw)), evidence.provider

    @staticmethod
    def _ak_material(tpm: Tpm) -> tuple[str, bytes, bytes]:
        """(kind, AK certificate DER, AK template) from the first of Google's NV indices present."""
        for kind, cert_index, template_index in _AK_KINDS:
            try:
                raw_cert = tpm.nv_read(cert_index)
            except TpmCommandError as exc:
                if exc.name == "TPM_RC_HANDLE":
                    continue
                raise
            try:
                template = tpm.nv_read(template_index)
            except TpmCommandError as exc:
                if exc.name != "TPM_RC_HANDLE":
                    raise
                raise UsageError(
                    f"the vTPM has a GCE AK certificate ({cert_index:#010x}) but no AK template at NV index"
                    f" {template_index:#010x}"
                ) from None
            return kind, _der_certificate(raw_cert, cert_index), template
        raise UsageError(
            f"the vTPM has no GCE AK certificate (NV index {AK_CERT_NV_INDEX_RSA:#010x} or"
            f" {AK_CERT_NV_INDEX_ECC:#010x}): this is not a GCE Shielded or Confidential VM"
        )

    def _quote(
        self, tpm: Tpm, handle: int, ak: TpmPublic, report_data: bytes
    ) -> tuple[bytes, bytes, list[bytes], bytes]:
        problem = "the PCRs kept changing between the quote and the PCR read"
        for _ in range(_QUOTE_ATTEMPTS):
            quote = tpm.quote(handle, report_data, _PCR_INDICES)
            pcrs = tpm.pcr_read(_PCR_INDICES)
            attest = parse_attest(quote.attest)
            if attest.selected() != _SELECTION:
                raise BindingError(
                    f"the quote selects (bank, PCR) {attest.selected()}, expected SHA-256 PCRs 0-23"
                )
            quoted = dict(zip(_PCR_INDICES, pcrs, strict=True))
            try:
                # Part 3 §18.4: signature, TPM_GENERATED magic, pcrDigest over the PCRs read,
                # extraData == our report data.
                verify_quote(quote.attest, quote.signature, ak, {TPM_ALG_SHA256: quoted}, nonce=report_data)
            except MeasurementError:
                continue  # a PCR was extended between the quote and the read: quote again
            log = self._read_event_log()
            mismatch = _replay_mismatch(log, quoted)
            if mismatch is None:
                return quote.attest, quote.signature, pcrs, log
            problem = mismatch  # an event logged after the quote, or a log of another boot
        raise MeasurementError(problem)

    def _read_event_log(self) -> bytes:
        path = self._event_log
        if path is None:
            return b""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_EVENT_LOG + 1)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise StorageError(f"event log {str(path)!r}: {exc.strerror or exc}") from None
        if len(data) > MAX_EVENT_LOG:
            raise ParseError(f"more than {MAX_EVENT_LOG} bytes", structure=f"event log {str(path)!r}")
        return data


def _replay_mismatch(log: bytes, quoted: dict[int, bytes]) -> str | None:
    """Why the event log does not reproduce the quoted SHA-256 PCRs it extends (``None``: it does)."""
    if not log:
        return None
    replayed = replay_pcrs(EventLog.from_bytes(log))
    for index, value in sorted(replayed.items()):
        want = quoted.get(index)
        if want is None:
            return f"the event log extends PCR {index}, which the quote does not cover"
        if not hmac.compare_digest(value, want):
            return (
                f"PCR {index} replayed from the event log is {value.hex()}, the quote says"
                f" {want.hex()}: the verifier would refuse this log"
            )
    return None


def _chains(
    leaf: x509.Certificate, pool: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> bool:
    """Whether ``pool`` links ``leaf`` to one of ``roots`` (names and signatures only: the
    verifier checks the rest)."""
    current = leaf
    for _ in range(MAX_HOPS + 1):
        if signed_by_one_of(current, roots):
            return True
        issuers = [c for c in pool if signed_by_one_of(current, [c])]
        if not issuers:
            return False
        current = issuers[0]
    return False


def _der_key_of(cert: bytes) -> bytes:
    return _key_der(x509.load_der_x509_certificate(cert).public_key())


def _template_index(kind: str) -> int:
    return AK_TEMPLATE_NV_INDEX_RSA if kind == "rsa" else AK_TEMPLATE_NV_INDEX_ECC
