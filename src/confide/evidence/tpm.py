"""TPM 2.0 structures: the signed attestation (``TPMS_ATTEST``), signatures and public areas.

Layouts are those of the TCG "TPM 2.0 Library, Part 2: Structures" (rev 01.59); section
numbers below refer to it. Every TPM structure is big-endian and every ``TPM2B_*`` is a
``UINT16`` size followed by that many bytes (§10.4). Parsed here:

* ``TPMS_ATTEST`` (§10.12.12) of type ``TPM_ST_ATTEST_QUOTE`` (§6.9), i.e. the message a TPM
  signs in ``TPM2_Quote``: magic (``TPM_GENERATED``, §6.2), type, qualified signer
  (``TPM2B_NAME``, §10.5.3), extra data (``TPM2B_DATA``, §10.4.3: the caller's nonce),
  ``TPMS_CLOCK_INFO`` (§10.11.1), firmware version and ``TPMS_QUOTE_INFO`` (§10.12.4:
  ``TPML_PCR_SELECTION`` (§10.9.7) and the PCR digest);
* ``TPMT_SIGNATURE`` (§11.3.4) with the RSASSA, RSAPSS (§11.3.1) and ECDSA (§11.3.2) schemes;
* ``TPMT_PUBLIC`` (§12.2.4) for RSA (§12.2.3.5 ``TPMS_RSA_PARMS``) and ECC
  (§12.2.3.6 ``TPMS_ECC_PARMS``) keys, with ``TPMA_OBJECT`` (§8.3) attributes.

The input is hostile: every size is checked against the structure's bound before anything is
read, unknown algorithms and schemes are refused, and trailing bytes are refused. Parsing
says nothing about authenticity; ``confide.verify.tpm.verify_quote`` checks the signature.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from confide.errors import ParseError
from confide.evidence._reader import BigEndianReader

__all__ = [
    "HASH_SIZES",
    "TPM_ALG_ECC",
    "TPM_ALG_ECDSA",
    "TPM_ALG_NULL",
    "TPM_ALG_RSA",
    "TPM_ALG_RSAPSS",
    "TPM_ALG_RSASSA",
    "TPM_ALG_SHA1",
    "TPM_ALG_SHA256",
    "TPM_ALG_SHA384",
    "TPM_ALG_SHA512",
    "TPM_GENERATED_VALUE",
    "TPM_ST_ATTEST_QUOTE",
    "ClockInfo",
    "PcrSelection",
    "TpmPublic",
    "TpmSignature",
    "TpmsAttest",
    "alg_name",
    "parse_attest",
    "parse_public",
    "parse_signature",
    "rsassa_signature",
]

# §6.2 TPM_GENERATED and §6.9 TPM_ST.
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

# §6.3 TPM_ALG_ID (values from the TCG Algorithm Registry).
TPM_ALG_RSA = 0x0001
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAES = 0x0015
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_OAEP = 0x0017
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECDH = 0x0019
TPM_ALG_ECDAA = 0x001A
TPM_ALG_SM2 = 0x001B
TPM_ALG_ECSCHNORR = 0x001C
TPM_ALG_ECMQV = 0x001D
TPM_ALG_KDF1_SP800_56A = 0x0020
TPM_ALG_KDF2 = 0x0021
TPM_ALG_KDF1_SP800_108 = 0x0022
TPM_ALG_ECC = 0x0023
TPM_ALG_AES = 0x0006
TPM_ALG_SM4 = 0x0013
TPM_ALG_CAMELLIA = 0x0026
TPM_ALG_MGF1 = 0x0007

HASH_SIZES = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48, TPM_ALG_SHA512: 64}
_ALG_NAMES = {
    TPM_ALG_RSA: "rsa",
    TPM_ALG_SHA1: "sha1",
    TPM_ALG_SHA256: "sha256",
    TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512",
    TPM_ALG_NULL: "null",
    TPM_ALG_RSASSA: "rsassa",
    TPM_ALG_RSAES: "rsaes",
    TPM_ALG_RSAPSS: "rsapss",
    TPM_ALG_OAEP: "oaep",
    TPM_ALG_ECDSA: "ecdsa",
    TPM_ALG_ECDAA: "ecdaa",
    TPM_ALG_ECC: "ecc",
}

# §11.2.5.2 TPM_ECC_CURVE (TCG Algorithm Registry) -> cryptography curve.
TPM_ECC_NIST_P256 = 0x0003
TPM_ECC_NIST_P384 = 0x0004
TPM_ECC_NIST_P521 = 0x0005
_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    TPM_ECC_NIST_P256: (ec.SECP256R1, 256),
    TPM_ECC_NIST_P384: (ec.SECP384R1, 384),
    TPM_ECC_NIST_P521: (ec.SECP521R1, 521),
}

# Size bounds (Part 2 sizes for an implementation with SHA-512, RSA-4096 and P-521).
MAX_DIGEST_BUFFER = 64  # TPM2B_DIGEST: sizeof(TPMU_HA), §10.4.2
MAX_DATA_BUFFER = 66  # TPM2B_DATA: sizeof(TPMT_HA), §10.4.3
MAX_NAME_BUFFER = 66  # TPM2B_NAME: sizeof(TPMU_NAME), §10.5.3
MAX_RSA_KEY_BYTES = 512  # TPM2B_PUBLIC_KEY_RSA, §11.2.4.5
MAX_ECC_KEY_BYTES = 66  # TPM2B_ECC_PARAMETER, §11.2.5.1
MAX_PCR_BANKS = 16  # TPML_PCR_SELECTION count <= HASH_COUNT, §10.9.7
MAX_SIZEOF_SELECT = 32  # TPMS_PCR_SELECTION sizeofSelect <= PCR_SELECT_MAX, §10.6.2
MAX_ATTEST_SIZE = 1024  # TPM2B_ATTEST holds at most sizeof(TPMS_ATTEST), §10.12.13
MAX_PUBLIC_SIZE = 2048
HANDLE_NAME_SIZE = 4  # a name that is a handle (§10.5.3: PCRs, sessions, permanent handles)
RSA_DEFAULT_EXPONENT = 65537  # §12.2.3.5: exponent 0 means 2^16 + 1

# §8.3 TPMA_OBJECT bits.
OBJECT_ATTRIBUTE_NAMES = {
    1 << 1: "fixedTPM",
    1 << 2: "stClear",
    1 << 4: "fixedParent",
    1 << 5: "sensitiveDataOrigin",
    1 << 6: "userWithAuth",
    1 << 7: "adminWithPolicy",
    1 << 10: "noDA",
    1 << 11: "encryptedDuplication",
    1 << 16: "restricted",
    1 << 17: "decrypt",
    1 << 18: "sign",
    1 << 19: "x509sign",
}
TPMA_OBJECT_RESTRICTED = 1 << 16
TPMA_OBJECT_SIGN = 1 << 18


def alg_name(alg: int) -> str:
    return _ALG_NAMES.get(alg, f"{alg:#06x}")


class _Reader(BigEndianReader):
    """TPM structures are in network byte order (Part 1 §18.4); TPM2B sizes are bounded."""

    __slots__ = ()

    def tpm2b(self, field: str, maximum: int) -> bytes:
        at = self.pos
        size = self.u16(f"{field}.size")
        if size > maximum:
            raise self.error(f"got size {size}, expected at most {maximum}", f"{field}.size", at)
        return self.take(size, f"{field}.buffer")

    def hash_alg(self, field: str, *, allow_null: bool = False) -> int:
        at = self.pos
        alg = self.u16(field)
        if alg in HASH_SIZES or (allow_null and alg == TPM_ALG_NULL):
            return alg
        expected = "sha1, sha256, sha384 or sha512" + (" or null" if allow_null else "")
        raise self.error(f"got hash algorithm {alg_name(alg)}, expected {expected}", field, at)


def _limit(data: bytes, maximum: int, structure: str) -> None:
    if len(data) > maximum:
        raise ParseError(f"got {len(data)} bytes, expected at most {maximum}", structure=structure)


# --- TPMS_ATTEST ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """One ``TPMS_PCR_SELECTION`` (§10.6.2): a bank and the PCRs selected in it (ascending)."""

    hash_alg: int
    pcrs: tuple[int, ...]
    size_of_select: int = 3


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """``TPMS_CLOCK_INFO`` (§10.11.1)."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True, slots=True)
class TpmsAttest:
    """A ``TPMS_ATTEST`` (§10.12.12) of type ``TPM_ST_ATTEST_QUOTE``; ``raw`` is the signed bytes."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_selections: tuple[PcrSelection, ...]
    pcr_digest: bytes
    raw: bytes

    def selected(self) -> tuple[tuple[int, int], ...]:
        """(bank, PCR index) in the order the TPM hashes them into ``pcr_digest`` (§10.12.4)."""
        return tuple((s.hash_alg, i) for s in self.pcr_selections for i in s.pcrs)


def _pcr_selection(r: _Reader, n: int) -> PcrSelection:
    field = f"pcrSelect.pcrSelections[{n}]"
    alg_at = r.pos
    alg = r.u16(f"{field}.hash")
    if alg == TPM_ALG_NULL:
        raise r.error("got hash algorithm null, expected a PCR bank", f"{field}.hash", alg_at)
    size_at = r.pos
    size = r.u8(f"{field}.sizeofSelect")
    if size > MAX_SIZEOF_SELECT:
        raise r.error(f"got {size}, expected at most {MAX_SIZEOF_SELECT}", f"{field}.sizeofSelect", size_at)
    bitmap = r.take(size, f"{field}.pcrSelect")
    # §10.6.2: bit b of octet o selects PCR 8*o + b.
    pcrs = tuple(8 * o + b for o, octet in enumerate(bitmap) for b in range(8) if octet >> b & 1)
    return PcrSelection(alg, pcrs, size)


def parse_attest(data: bytes) -> TpmsAttest:
    """Parse a ``TPMS_ATTEST`` quote (the exact bytes the TPM signed)."""
    structure = "TPMS_ATTEST"
    _limit(data, MAX_ATTEST_SIZE, structure)
    r = _Reader(data, structure)
    magic = r.u32("magic")  # §6.2; checked by verify_quote, after the signature
    type_at = r.pos
    st = r.u16("type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise r.error(
            f"got {st:#06x}, expected TPM_ST_ATTEST_QUOTE ({TPM_ST_ATTEST_QUOTE:#06x}): only quotes are read",
            "type",
            type_at,
        )
    name_at = r.pos
    signer = r.tpm2b("qualifiedSigner", MAX_NAME_BUFFER)
    if len(signer) not in (0, HANDLE_NAME_SIZE):
        # §10.5.3: otherwise a TPMT_HA, the name algorithm followed by its digest.
        alg = int.from_bytes(signer[:2], "big")
        if alg not in HASH_SIZES or len(signer) != 2 + HASH_SIZES[alg]:
            raise r.error(
                f"got a {len(signer)}-byte name with algorithm {alg_name(alg)}, expected a handle or "
                "a hash algorithm followed by its digest",
                "qualifiedSigner",
                name_at,
            )
    extra = r.tpm2b("extraData", MAX_DATA_BUFFER)
    clock = r.u64("clockInfo.clock")
    reset = r.u32("clockInfo.resetCount")
    restart = r.u32("clockInfo.restartCount")
    safe_at = r.pos
    safe = r.u8("clockInfo.safe")
    if safe not in (0, 1):  # TPMI_YES_NO, §9.2
        raise r.error(f"got {safe}, expected 0 or 1", "clockInfo.safe", safe_at)
    firmware = r.u64("firmwareVersion")
    count_at = r.pos
    count = r.u32("pcrSelect.count")
    if count > MAX_PCR_BANKS:
        raise r.error(f"got {count}, expected at most {MAX_PCR_BANKS}", "pcrSelect.count", count_at)
    selections = tuple(_pcr_selection(r, n) for n in range(count))
    digest = r.tpm2b("pcrDigest", MAX_DIGEST_BUFFER)
    r.expect_end()
    return TpmsAttest(
        magic=magic,
        type=st,
        qualified_signer=signer,
        extra_data=extra,
        clock_info=ClockInfo(clock, reset, restart, bool(safe)),
        firmware_version=firmware,
        pcr_selections=selections,
        pcr_digest=digest,
        raw=bytes(data),
    )


# --- TPMT_SIGNATURE ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmSignature:
    """A ``TPMT_SIGNATURE`` (§11.3.4): RSASSA/RSAPSS carry ``rsa``; ECDSA carries ``r``, ``s``."""

    sig_alg: int
    hash_alg: int
    rsa: bytes = b""
    r: bytes = b""
    s: bytes = b""


def parse_signature(data: bytes) -> TpmSignature:
    """Parse a ``TPMT_SIGNATURE`` of scheme RSASSA, RSAPSS or ECDSA."""
    structure = "TPMT_SIGNATURE"
    _limit(data, 2 + 2 + 2 + MAX_RSA_KEY_BYTES, structure)
    r = _Reader(data, structure)
    alg = r.u16("sigAlg")
    if alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
        hash_alg = r.hash_alg("signature.hash")  # §11.3.1 TPMS_SIGNATURE_RSA
        sig = r.tpm2b("signature.sig", MAX_RSA_KEY_BYTES)
        if not sig:
            raise r.error("empty RSA signature", "signature.sig")
        out = TpmSignature(alg, hash_alg, rsa=sig)
    elif alg == TPM_ALG_ECDSA:
        hash_alg = r.hash_alg("signature.hash")  # §11.3.2 TPMS_SIGNATURE_ECC
        sig_r = r.tpm2b("signature.signatureR", MAX_ECC_KEY_BYTES)
        sig_s = r.tpm2b("signature.signatureS", MAX_ECC_KEY_BYTES)
        if not sig_r or not sig_s:
            raise r.error("empty ECDSA r or s", "signature")
        out = TpmSignature(alg, hash_alg, r=sig_r, s=sig_s)
    else:
        raise r.error(f"got {alg_name(alg)}, expected rsassa, rsapss or ecdsa", "sigAlg", 0)
    r.expect_end()
    return out


def rsassa_signature(signature: bytes, hash_alg: int = TPM_ALG_SHA256) -> TpmSignature:
    """A bare RSA signature (as Azure's vTPM evidence carries it) as an RSASSA ``TpmSignature``."""
    if not 0 < len(signature) <= MAX_RSA_KEY_BYTES:
        raise ParseError(
            f"got {len(signature)} bytes, expected 1..{MAX_RSA_KEY_BYTES}", structure="RSA signature"
        )
    if hash_alg not in HASH_SIZES:
        raise ParseError(f"got hash algorithm {alg_name(hash_alg)}", structure="RSA signature")
    return TpmSignature(TPM_ALG_RSASSA, hash_alg, rsa=bytes(signature))


# --- TPMT_PUBLIC ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmPublic:
    """A ``TPMT_PUBLIC`` (§12.2.4) of an RSA or ECC key; ``raw`` is the parsed bytes."""

    type: int
    name_alg: int
    object_attributes: int
    auth_policy: bytes
    symmetric: int
    scheme: int
    scheme_hash: int
    key_bits: int
    """RSA: keyBits; ECC: the curve's field size in bits."""
    exponent: int
    curve_id: int
    rsa_modulus: bytes
    ecc_x: bytes
    ecc_y: bytes
    raw: bytes

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in OBJECT_ATTRIBUTE_NAMES.items() if self.object_attributes & bit)

    @property
    def restricted_signing(self) -> bool:
        """``restricted`` and ``sign`` set: the TPM signs only data it generated itself (§8.3.3.1)."""
        mask = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN
        return self.object_attributes & mask == mask

    def name(self) -> bytes:
        """The object's name (Part 1 §16): nameAlg ‖ H_nameAlg(TPMT_PUBLIC)."""
        digest = hashlib.new(alg_name(self.name_alg), self.raw).digest()
        return self.name_alg.to_bytes(2, "big") + digest

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` public key; ParseError if the numbers are unusable."""
        try:
            if self.type == TPM_ALG_RSA:
                exponent = self.exponent or RSA_DEFAULT_EXPONENT
                modulus = int.from_bytes(self.rsa_modulus, "big")
                return rsa.RSAPublicNumbers(exponent, modulus).public_key()
            curve, _ = _CURVES[self.curve_id]
            x, y = int.from_bytes(self.ecc_x, "big"), int.from_bytes(self.ecc_y, "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        except ValueError as exc:
            raise ParseError(f"unusable public key: {exc}", structure="TPMT_PUBLIC") from None


def _sym_def_object(r: _Reader) -> int:
    """``TPMT_SYM_DEF_OBJECT`` (§11.1.7): algorithm, then keyBits and mode unless NULL."""
    alg_at = r.pos
    alg = r.u16("parameters.symmetric.algorithm")
    if alg == TPM_ALG_NULL:
        return alg
    if alg not in (TPM_ALG_AES, TPM_ALG_SM4, TPM_ALG_CAMELLIA):
        raise r.error(f"got {alg_name(alg)}, expected aes, sm4, camellia or null", "symmetric", alg_at)
    r.u16("parameters.symmetric.keyBits")
    r.u16("parameters.symmetric.mode")
    return alg


_SCHEMES_WITH_HASH = frozenset(
    {TPM_ALG_RSASSA, TPM_ALG_RSAPSS, TPM_ALG_OAEP, TPM_ALG_ECDSA}
    | {TPM_ALG_ECDH, TPM_ALG_SM2, TPM_ALG_ECSCHNORR, TPM_ALG_ECMQV}
)


def _scheme(r: _Reader, field: str) -> tuple[int, int]:
    """``TPMT_RSA_SCHEME`` / ``TPMT_ECC_SCHEME`` (§11.2.4.2, §11.2.5.6): (scheme, hash)."""
    at = r.pos
    scheme = r.u16(f"{field}.scheme")
    if scheme in (TPM_ALG_NULL, TPM_ALG_RSAES):  # RSAES has empty details (§11.2.4.1)
        return scheme, TPM_ALG_NULL
    if scheme in _SCHEMES_WITH_HASH:
        return scheme, r.hash_alg(f"{field}.details.hashAlg")
    if scheme == TPM_ALG_ECDAA:  # TPMS_SCHEME_ECDAA: hashAlg and count (§11.2.3.2)
        hash_alg = r.hash_alg(f"{field}.details.hashAlg")
        r.u16(f"{field}.details.count")
        return scheme, hash_alg
    raise r.error(f"got unknown scheme {alg_name(scheme)}", f"{field}.scheme", at)


def parse_public(data: bytes) -> TpmPublic:
    """Parse a ``TPMT_PUBLIC`` of type RSA or ECC."""
    structure = "TPMT_PUBLIC"
    _limit(data, MAX_PUBLIC_SIZE, structure)
    r = _Reader(data, structure)
    key_type = r.u16("type")
    if key_type not in (TPM_ALG_RSA, TPM_ALG_ECC):
        raise r.error(f"got {alg_name(key_type)}, expected rsa or ecc", "type", 0)
    name_alg = r.hash_alg("nameAlg")
    attributes = r.u32("objectAttributes")
    policy = r.tpm2b("authPolicy", MAX_DIGEST_BUFFER)
    symmetric = _sym_def_object(r)
    exponent = curve_id = 0
    modulus = x = y = b""
    if key_type == TPM_ALG_RSA:
        scheme, scheme_hash = _scheme(r, "parameters.scheme")
        bits_at = r.pos
        key_bits = r.u16("parameters.keyBits")
        exponent = r.u32("parameters.exponent")
        modulus = r.tpm2b("unique.rsa", MAX_RSA_KEY_BYTES)
        if key_bits not in (1024, 2048, 3072, 4096) or len(modulus) * 8 != key_bits:
            raise r.error(
                f"got keyBits {key_bits} with a {len(modulus)}-byte modulus, expected 1024..4096 and equal",
                "parameters.keyBits",
                bits_at,
            )
        if exponent == 1 or (exponent and exponent % 2 == 0):
            raise r.error(f"got exponent {exponent}, expected 0 or an odd number > 1", "parameters.exponent")
    else:
        scheme, scheme_hash = _scheme(r, "parameters.scheme")
        curve_at = r.pos
        curve_id = r.u16("parameters.curveID")
        if curve_id not in _CURVES:
            raise r.error(
                f"got curve {curve_id:#06x}, expected NIST P-256, P-384 or P-521", "curveID", curve_at
            )
        kdf_at = r.pos
        kdf = r.u16("parameters.kdf.scheme")  # TPMT_KDF_SCHEME, §11.2.3.3
        if kdf != TPM_ALG_NULL:
            if kdf not in (TPM_ALG_MGF1, TPM_ALG_KDF1_SP800_56A, TPM_ALG_KDF2, TPM_ALG_KDF1_SP800_108):
                raise r.error(f"got unknown KDF {alg_name(kdf)}", "parameters.kdf.scheme", kdf_at)
            r.hash_alg("parameters.kdf.details.hashAlg")
        _, key_bits = _CURVES[curve_id]
        size = (key_bits + 7) // 8
        x = r.tpm2b("unique.ecc.x", MAX_ECC_KEY_BYTES)
        y = r.tpm2b("unique.ecc.y", MAX_ECC_KEY_BYTES)
        if not (0 < len(x) <= size and 0 < len(y) <= size):
            message = f"got a point of {len(x)}+{len(y)} bytes, expected at most {size}+{size}"
            raise r.error(message, "unique.ecc")
    r.expect_end()
    return TpmPublic(
        type=key_type,
        name_alg=name_alg,
        object_attributes=attributes,
        auth_policy=policy,
        symmetric=symmetric,
        scheme=scheme,
        scheme_hash=scheme_hash,
        key_bits=key_bits,
        exponent=exponent,
        curve_id=curve_id,
        rsa_modulus=modulus,
        ecc_x=x,
        ecc_y=y,
        raw=bytes(data),
    )
