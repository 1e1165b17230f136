"""Google's CRLs for ``gce-tpm`` evidence: ``cas serve --gce-crl FILE`` (docs/gce-tpm.md,
"Revocation").

The file holds the CRLs of the CAs above GCE AK certificates (DER, concatenated, or PEM ``X509
CRL`` blocks; at most :data:`MAX_FILE_SIZE` bytes and
:data:`~confide.verify.gce_crl.MAX_CRLS` CRLs), as Google publishes them at the CRL
Distribution Points its certificates name. It is read before phase 1 of every ``gce-tpm``
attestation (:meth:`confide.cas.verifier.PlatformVerifier.collateral_job`), parsed again only
when it changed (device, inode, size or modification time), so an operator replaces it
atomically (write, then rename) while the CAS runs. What it holds is verified at every use
(:mod:`confide.verify.gce_crl`: signed by the certificate's issuer, current at the attestation's
time, fail closed when a certificate's CRL is missing); a file that cannot be read or parsed
refuses every ``gce-tpm`` attestation with its error until it is fixed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography import x509

from confide.errors import ParseError, StorageError
from confide.verify.gce_crl import load_crls

__all__ = ["MAX_FILE_SIZE", "GceCrlFile"]

MAX_FILE_SIZE = 16 * 1024 * 1024
"""The largest ``--gce-crl`` file read (bytes)."""


class GceCrlFile:
    """The CRLs of ``path`` (module docstring), kept parsed while the file does not change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._kept: tuple[tuple[int, int, int, int], tuple[x509.CertificateRevocationList, ...]] | None = None

    def load(self) -> tuple[x509.CertificateRevocationList, ...]:
        """The CRLs now in the file: :class:`StorageError` when it cannot be read,
        :class:`ParseError` when it is too large or not CRLs."""
        what = f"--gce-crl {str(self.path)!r}"
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                with self._lock:
                    kept = self._kept
                if kept is not None and kept[0] == stamp:
                    return kept[1]
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as exc:
            raise StorageError(f"{what}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_SIZE:
            raise ParseError(f"more than {MAX_FILE_SIZE} bytes", structure=what)
        crls = load_crls(data, what)
        with self._lock:
            self._kept = (stamp, crls)
        return crls
