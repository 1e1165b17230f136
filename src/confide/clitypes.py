"""Command-line parameter types shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from confide.platforms import AUTO, MAX_TCB_EVAL_NUMBER, MAX_TCB_RECOVERY_GRACE_DAYS

__all__ = [
    "AUTO",
    "MIN_TCB_EVAL_NUMBER",
    "MinTcbEvalNumber",
    "pcs_tcb_eval_number_option",
    "pcs_update_option",
    "tcb_recovery_grace_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])


class MinTcbEvalNumber(click.ParamType[int | str, Any]):
    """``--min-tcb-eval-number``: an integer 1..2**32-1 (as ``click.IntRange`` checks and words
    it), or ``auto``: the minimum that Intel's verified TCB evaluation data numbers set at the
    verification time (docs/dcap.md, "Automatic minimum")."""

    name = "integer"
    _range = click.IntRange(1, MAX_TCB_EVAL_NUMBER)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if value == AUTO:
            return AUTO
        converted: int = self._range.convert(value, param, ctx)
        return converted

    def __repr__(self) -> str:
        return "MinTcbEvalNumber"


MIN_TCB_EVAL_NUMBER = MinTcbEvalNumber()


def tcb_recovery_grace_option(when: str = "With --min-tcb-eval-number auto") -> Callable[[_F], _F]:
    """``--tcb-recovery-grace DAYS`` (0..3650) of every command that takes
    ``--min-tcb-eval-number auto`` (``when``: the help's opening words)."""
    return click.option(
        "--tcb-recovery-grace",
        "tcb_recovery_grace",
        type=click.IntRange(0, MAX_TCB_RECOVERY_GRACE_DAYS),
        metavar="DAYS",
        help=f"{when}: days after a TCB recovery event before its number is required (default 365: what"
        " Intel PCS's standard update serves).",
    )


def pcs_update_option() -> Callable[[_F], _F]:
    """``--pcs-update early|standard`` of every command that takes ``--collateral URL`` for Intel
    DCAP (docs/dcap.md, "Early or standard collateral")."""
    return click.option(
        "--pcs-update",
        "pcs_update",
        type=click.Choice(["early", "standard"]),
        help="With --collateral URL: ask Intel PCS (or a PCCS) for TCB Info and QE Identity of this"
        " update (early: the newest TCB evaluation from its recovery event on; standard: about twelve"
        " months later). Default: no parameter (PCS serves standard).",
    )


def pcs_tcb_eval_number_option() -> Callable[[_F], _F]:
    """``--pcs-tcb-eval-number N`` of every command that takes ``--pcs-update`` (docs/dcap.md,
    "One TCB evaluation")."""
    return click.option(
        "--pcs-tcb-eval-number",
        "pcs_tcb_eval_number",
        type=click.IntRange(1, MAX_TCB_EVAL_NUMBER),
        metavar="N",
        help="With --collateral URL: ask Intel PCS (or a PCCS) for TCB Info and QE Identity of TCB"
        " evaluation data number N (tcbEvaluationDataNumber=N) and refuse answers of another number;"
        " not with --pcs-update.",
    )
