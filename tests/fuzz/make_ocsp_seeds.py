"""Seed corpus for ``ocsp_request_fuzz.py``: real OCSPRequests from ``cryptography``'s
``OCSPRequestBuilder`` and from ``openssl ocsp -reqout`` (several serials, nonces, a signed
request with a requestorName), written to the directory given as the only argument.

    .venv/bin/python tests/fuzz/make_ocsp_seeds.py /tmp/ocsp-seeds
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID


def _cert(subject: str, issuer: x509.Certificate | None, key: ec.EllipticCurvePrivateKey,
          signer: ec.EllipticCurvePrivateKey, serial: int) -> x509.Certificate:  # fmt: skip
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Seed CA", None, ca_key, ca_key, 1)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    seeds: list[bytes] = []
    for serial in (1, 0x7F, 0x80, 2**159 - 1):
        leaf = _cert("leaf", ca, leaf_key, ca_key, serial)
        for algorithm in (hashes.SHA1(), hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
            builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, algorithm)
            seeds.append(builder.build().public_bytes(serialization.Encoding.DER))
            nonced = builder.add_extension(x509.OCSPNonce(bytes(range(16))), critical=False)
            seeds.append(nonced.build().public_bytes(serialization.Encoding.DER))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (d / "key.pem").write_bytes(
            leaf_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        leaf = _cert("leaf", ca, leaf_key, ca_key, 5)
        (d / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        base = ["openssl", "ocsp", "-issuer", str(d / "ca.pem")]
        variants = [
            ["-serial", "5"],
            ["-serial", "5", "-serial", "6", "-serial", "0x1234567890abcdef"],
            ["-cert", str(d / "leaf.pem"), "-no_nonce"],
            ["-cert", str(d / "leaf.pem"), "-sha256", "-serial", "9"],
            ["-serial", "5", "-signer", str(d / "leaf.pem"), "-signkey", str(d / "key.pem")],
            [
                "-serial",
                "5",
                "-signer",
                str(d / "leaf.pem"),
                "-signkey",
                str(d / "key.pem"),
                "-sign_other",
                str(d / "ca.pem"),
            ],
        ]
        for i, extra in enumerate(variants):
            path = d / f"req{i}.der"
            subprocess.run([*base, *extra, "-reqout", str(path)], check=True, capture_output=True)
            seeds.append(path.read_bytes())
    for seed in seeds:
        (out / hashlib.sha256(seed).hexdigest()[:16]).write_bytes(seed)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
