"""Collateral sources: fetching and caching what verifiers need (vendor certificates, CRLs).

Everything here may do I/O (files, HTTP); ``confide.verify`` never does.
"""
