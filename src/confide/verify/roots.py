"""Pinned vendor roots, embedded as text (nothing under ``verify/`` reads files).

Each root is pinned twice: by its PEM text here and by the SHA-256 fingerprint of its DER
encoding, checked when this module is imported (:func:`pinned_der`); chains are compared with
the DER bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re

from confide.errors import CertificateChainError

__all__ = [
    "INTEL_SGX_ROOT_CA_DER",
    "INTEL_SGX_ROOT_CA_SHA256",
    "INTEL_SGX_TCB_SIGNING_2025_DER",
    "der_from_pem",
    "pinned_der",
]


def der_from_pem(text: str) -> bytes:
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", text)
    return base64.b64decode(body, validate=True)


def pinned_der(text: str, sha256: bytes, name: str) -> bytes:
    """The DER of the PEM ``text`` if its SHA-256 is ``sha256``; else CertificateChainError (the
    text was edited: the package was tampered with)."""
    der = der_from_pem(text)
    got = hashlib.sha256(der).digest()
    if got != sha256:
        raise CertificateChainError(
            f"embedded {name}: got fingerprint {got.hex()}, expected {sha256.hex()} (package tampered?)"
        )
    return der


# Intel SGX Root CA (production), valid 2018-05-21..2049-12-31. Intel publishes it at
# certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.pem.
_INTEL_SGX_ROOT_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""
INTEL_SGX_ROOT_CA_SHA256 = bytes.fromhex("44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3")
INTEL_SGX_ROOT_CA_DER = pinned_der(_INTEL_SGX_ROOT_CA_PEM, INTEL_SGX_ROOT_CA_SHA256, "Intel SGX Root CA")

# Intel SGX TCB Signing certificate, 2025 issuance (2025-05-06..2032-05-06; same key and serial
# as the 2018 issuance). Used only as a fallback issuer chain for PCS responses stored without
# their TCB-Info-Issuer-Chain header; it is verified against the pinned root like any other.
_INTEL_SGX_TCB_SIGNING_2025_PEM = """\
-----BEGIN CERTIFICATE-----
MIICjTCCAjKgAwIBAgIUfjiC1ftVKUpASY5FhAPpFJG99FUwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTI1MDUwNjA5MjUwMFoXDTMyMDUwNjA5MjUwMFowbDEeMBwG
A1UEAwwVSW50ZWwgU0dYIFRDQiBTaWduaW5nMRowGAYDVQQKDBFJbnRlbCBDb3Jw
b3JhdGlvbjEUMBIGA1UEBwwLU2FudGEgQ2xhcmExCzAJBgNVBAgMAkNBMQswCQYD
VQQGEwJVUzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABENFG8xzydWRfK92bmGv
P+mAh91PEyV7Jh6FGJd5ndE9aBH7R3E4A7ubrlh/zN3C4xvpoouGlirMba+W2lju
ypajgbUwgbIwHwYDVR0jBBgwFoAUImUM1lqdNInzg7SVUr9QGzknBqwwUgYDVR0f
BEswSTBHoEWgQ4ZBaHR0cHM6Ly9jZXJ0aWZpY2F0ZXMudHJ1c3RlZHNlcnZpY2Vz
LmludGVsLmNvbS9JbnRlbFNHWFJvb3RDQS5kZXIwHQYDVR0OBBYEFH44gtX7VSlK
QEmORYQD6RSRvfRVMA4GA1UdDwEB/wQEAwIGwDAMBgNVHRMBAf8EAjAAMAoGCCqG
SM49BAMCA0kAMEYCIQDdmmRuAo3qCO8TC1IoJMITAoOEw4dlgEBHzSz1TuMSTAIh
AKVTqOkt59+co0O3m3hC+v5Fb00FjYWcgeu3EijOULo5
-----END CERTIFICATE-----
"""
INTEL_SGX_TCB_SIGNING_2025_DER = der_from_pem(_INTEL_SGX_TCB_SIGNING_2025_PEM)
