"""Benchmark: opening a sealed secret row in the new format (``CSL2``: the master-key id after
the magic, looked up in the sealer's keys) next to the old one (``CSL1``: no id), interleaved in
one run (``_interleave``). The attestation path opens one row per secret it releases.

    .venv/bin/python bench/sealed_rows.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _interleave import interleaved  # noqa: E402

from confide.cas.secrets import Sealer, SecretValue  # noqa: E402

WHERE = {"policy": "bench", "name": "token", "version": 1}


def csl1_row(key: bytes, value: SecretValue) -> bytes:
    """A row as the CAS wrote it before the key id (``CSL1``, docs/cas.md "Online rotation")."""
    aad = b"confide-secret-v1\x00bench\x00token\x001"
    dek = AESGCM.generate_key(bit_length=256)
    n1, n2 = os.urandom(12), os.urandom(12)
    return (
        b"CSL1" + n1 + AESGCM(key).encrypt(n1, dek, aad) + n2 + AESGCM(dek).encrypt(n2, value.to_bytes(), aad)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    key = os.urandom(32)
    sealer = Sealer(key)
    value = SecretValue("ascii", b"x" * 32)
    old, new = csl1_row(key, value), sealer.seal(value, **WHERE)  # type: ignore[arg-type]
    assert sealer.unseal(old, **WHERE) == sealer.unseal(new, **WHERE) == value  # type: ignore[arg-type]
    t_old, t_new = interleaved(
        lambda: sealer.unseal(old, **WHERE),  # type: ignore[arg-type]
        lambda: sealer.unseal(new, **WHERE),  # type: ignore[arg-type]
        args.seconds,
    )
    print(f"unseal CSL1 (no key id): {t_old * 1e6:.2f} us")
    print(f"unseal CSL2 (key id):    {t_new * 1e6:.2f} us")
    print(f"ratio CSL2/CSL1: {t_new / t_old:.2f}")


if __name__ == "__main__":
    main()
