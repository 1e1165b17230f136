"""Command-line parameter types shared by several commands."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["AUTO", "MIN_TCB_EVAL_NUMBER", "MinTcbEvalNumber"]

AUTO = "auto"


class MinTcbEvalNumber(click.ParamType[int | str, Any]):
    """``--min-tcb-eval-number``: an integer 1..2**32-1 (as ``click.IntRange`` checks and words
    it), or ``auto``: the minimum that Intel's verified TCB evaluation data numbers set at the
    verification time (docs/dcap.md, "Automatic minimum")."""

    name = "integer"
    _range = click.IntRange(1, 0xFFFF_FFFF)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if value == AUTO:
            return AUTO
        converted: int = self._range.convert(value, param, ctx)
        return converted

    def __repr__(self) -> str:
        return "MinTcbEvalNumber"


MIN_TCB_EVAL_NUMBER = MinTcbEvalNumber()
