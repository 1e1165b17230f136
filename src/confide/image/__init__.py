"""Confidential container images: read/write OCI images, flatten layers, ``confide sconify``.

See ``docs/sconify.md``.
"""

from __future__ import annotations

from confide.image.oci import ImageRef, SourceImage, open_image, parse_ref, write_image
from confide.image.sconify import PolicySink, SconifyOptions, SconifyResult, policy_yaml, sconify

__all__ = [
    "ImageRef",
    "PolicySink",
    "SconifyOptions",
    "SconifyResult",
    "SourceImage",
    "open_image",
    "parse_ref",
    "policy_yaml",
    "sconify",
    "write_image",
]
