"""Verify a TPM 2.0 quote (``TPM2_Quote``, TPM 2.0 Library Part 3 §18.4) against an AK.

Steps, in order (structures: Part 2, see ``confide.evidence.tpm``):

1. Parse the ``TPMS_ATTEST`` and the ``TPMT_SIGNATURE`` (a bare RSA signature may be given as
   a :class:`~confide.evidence.tpm.TpmSignature` made with ``rsassa_signature``).
2. The signature over the exact attest bytes must verify with the AK, with the scheme and hash
   the signature names (RSASSA-PKCS1-v1_5, RSASSA-PSS or ECDSA) → :class:`SignatureError`.
3. The signed message must be TPM-generated: magic ``TPM_GENERATED_VALUE`` (Part 2 §6.2) and
   type ``TPM_ST_ATTEST_QUOTE`` (§6.9). A restricted signing key never signs external data
   that starts with this magic (Part 2 §8.3, TPMA_OBJECT.restricted), so only then is the
   content the TPM's own statement.
4. Every selected PCR must be given; ``pcrDigest`` must equal the hash (with the signature's
   hash algorithm, Part 3 §18.4.1) of the selected PCR values concatenated in selection order
   (banks as listed, indices ascending within a bank) → :class:`MeasurementError`.
5. ``extraData`` must equal ``nonce`` (constant-time) when a nonce is given → :class:`BindingError`.

The AK itself is not vouched for here: the caller ties it to a certificate (GCE) or to a
hardware report (Azure). No I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from confide.errors import BindingError, MeasurementError, SignatureError
from confide.evidence.tpm import (
    HASH_SIZES,
    TPM_ALG_ECDSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    TpmPublic,
    TpmsAttest,
    TpmSignature,
    alg_name,
    parse_attest,
    parse_signature,
)

__all__ = ["VerifiedQuote", "pcr_digest", "verify_quote"]

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    0x0004: hashes.SHA1,
    0x000B: hashes.SHA256,
    0x000C: hashes.SHA384,
    0x000D: hashes.SHA512,
}

AkKey = TpmPublic | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    """A quote whose signature, origin, PCR digest and (if asked) nonce were verified."""

    attest: TpmsAttest
    signature: TpmSignature
    pcrs: Mapping[int, Mapping[int, bytes]]
    """TPM_ALG_ID → {PCR index → value}: exactly the PCRs the quote selects."""
    nonce_checked: bool

    @property
    def extra_data(self) -> bytes:
        return self.attest.extra_data


def _ak_key(ak: AkKey) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    if isinstance(ak, TpmPublic):
        return ak.public_key()
    if isinstance(ak, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return ak
    raise TypeError(f"ak: got {type(ak).__name__}, expected TpmPublic or an RSA/EC public key")


def _check_signature(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, sig: TpmSignature, message: bytes
) -> None:
    hash_cls = _HASHES[sig.hash_alg]
    scheme = f"{alg_name(sig.sig_alg)}/{alg_name(sig.hash_alg)}"
    try:
        if sig.sig_alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
            if not isinstance(key, rsa.RSAPublicKey):
                raise SignatureError(f"quote signature: got scheme {scheme}, but the AK is not an RSA key")
            if len(sig.rsa) != (key.key_size + 7) // 8:
                raise SignatureError(
                    f"quote signature: got {len(sig.rsa)} bytes, expected {(key.key_size + 7) // 8}"
                    f" for the AK's {key.key_size}-bit modulus"
                )
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if sig.sig_alg == TPM_ALG_RSAPSS:
                # Part 1 Annex B (RSA): TPMs use a salt as long as the digest, some the maximum.
                pad = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.AUTO)
            key.verify(sig.rsa, message, pad, hash_cls())
        elif sig.sig_alg == TPM_ALG_ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise SignatureError(f"quote signature: got scheme {scheme}, but the AK is not an EC key")
            der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            key.verify(der, message, ec.ECDSA(hash_cls()))
        else:
            raise SignatureError(f"quote signature: got scheme {scheme}, expected rsassa, rsapss or ecdsa")
    except InvalidSignature:
        raise SignatureError(f"quote signature ({scheme}) does not verify with the AK") from None


def pcr_digest(attest: TpmsAttest, pcrs: Mapping[int, Mapping[int, bytes]], hash_alg: int) -> bytes:
    """Hash of the selected PCR values in selection order (Part 3 §18.4.1, ``PCRComputeCurrentDigest``).

    Raises :class:`MeasurementError` if a selected PCR is missing or has the wrong size.
    """
    hasher = hashlib.new(alg_name(hash_alg))
    for bank, index in attest.selected():
        size = HASH_SIZES.get(bank)
        if size is None:
            raise MeasurementError(f"the quote selects PCR bank {alg_name(bank)}, which is not supported")
        value = pcrs.get(bank, {}).get(index)
        if value is None:
            raise MeasurementError(
                f"PCR {index} of bank {alg_name(bank)} is selected by the quote but no value was given"
            )
        if len(value) != size:
            raise MeasurementError(
                f"PCR {index} of bank {alg_name(bank)}: got {len(value)} bytes, expected {size}"
            )
        hasher.update(value)
    return hasher.digest()


def verify_quote(
    attest: bytes,
    signature: bytes | TpmSignature,
    ak: AkKey,
    pcrs: Mapping[int, Mapping[int, bytes]],
    *,
    nonce: bytes | None,
) -> VerifiedQuote:
    """Verify a quote; see the module docstring for the steps and the errors they raise."""
    # 1. parse
    parsed = parse_attest(attest)
    sig = signature if isinstance(signature, TpmSignature) else parse_signature(signature)
    # 2. signature over the exact bytes
    _check_signature(_ak_key(ak), sig, parsed.raw)
    # 3. origin
    if parsed.magic != TPM_GENERATED_VALUE:
        raise SignatureError(
            f"quote magic: got {parsed.magic:#010x}, expected TPM_GENERATED_VALUE {TPM_GENERATED_VALUE:#010x}"
            " (the AK signed data the TPM did not generate)"
        )
    if parsed.type != TPM_ST_ATTEST_QUOTE:
        raise SignatureError(f"quote type: got {parsed.type:#06x}, expected {TPM_ST_ATTEST_QUOTE:#06x}")
    # 4. PCR digest
    expected = pcr_digest(parsed, pcrs, sig.hash_alg)
    if not hmac.compare_digest(parsed.pcr_digest, expected):
        raise MeasurementError(
            f"pcrDigest: the quote says {parsed.pcr_digest.hex()}, the given PCR values hash to "
            f"{expected.hex()} ({alg_name(sig.hash_alg)} over {len(parsed.selected())} PCRs)"
        )
    # 5. nonce
    if nonce is not None and not hmac.compare_digest(parsed.extra_data, nonce):
        raise BindingError(f"quote extraData: got {parsed.extra_data.hex()!r}, expected {nonce.hex()!r}")
    selected: dict[int, dict[int, bytes]] = {}
    for bank, index in parsed.selected():
        selected.setdefault(bank, {})[index] = bytes(pcrs[bank][index])
    frozen = MappingProxyType({bank: MappingProxyType(values) for bank, values in selected.items()})
    return VerifiedQuote(attest=parsed, signature=sig, pcrs=frozen, nonce_checked=nonce is not None)
