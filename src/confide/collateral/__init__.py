"""Collateral sources: the I/O side of verification (files, vendor web services, caches)."""
