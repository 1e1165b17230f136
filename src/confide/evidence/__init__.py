"""Parsing of attestation evidence: pure functions from bytes to frozen objects and back.

No cryptographic decisions and no I/O happen here (see ``confide.verify``).
"""
