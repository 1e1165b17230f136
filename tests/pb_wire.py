"""Protocol Buffers wire encoding for tests that build or extend protobuf evidence by hand
(https://protobuf.dev/programming-guides/encoding/: varints, tag = field << 3 | wire type): the
writer next to confide's reader, under the names the tests use."""

from __future__ import annotations

from confide.evidence._protobuf import encode_field as pb_field
from confide.evidence._protobuf import encode_varint as pb_varint

__all__ = ["pb_field", "pb_varint"]
