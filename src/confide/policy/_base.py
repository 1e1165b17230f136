"""Base model and shared field types of the policy model."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
)

from confide.policy import placeholders as ph
from confide.policy._types import (
    short,
)

__all__ = [
    "U16",
    "U32",
    "AbsPath",
    "PlaceholderText",
    "Text",
]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, validate_by_alias=True, validate_by_name=False
    )


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, dict | str) else value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("got a string containing NUL, expected C-string text (no NUL byte)")
    return value


def _check_placeholder_syntax(value: str) -> str:
    ph.find_placeholders(value)
    return value


Text = Annotated[StrictStr, AfterValidator(_no_nul)]
"""A string without NUL that may contain placeholders (their syntax is checked)."""
PlaceholderText = Annotated[StrictStr, AfterValidator(_no_nul), AfterValidator(_check_placeholder_syntax)]
U16 = Annotated[StrictInt, Field(ge=0, le=0xFFFF)]
U32 = Annotated[StrictInt, Field(ge=0, le=0xFFFF_FFFF)]


def _abs_path(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/") or len(value) > 4096:
        raise ValueError(f"got {short(value)}, expected an absolute path (starting with '/')")
    return value


AbsPath = Annotated[StrictStr, AfterValidator(_abs_path)]
