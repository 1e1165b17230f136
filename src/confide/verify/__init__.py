"""Verification of attestation evidence: signatures, certificate chains, CRLs, collateral.

No policy decisions, no network, no clock: collateral comes in through a
``CollateralSource`` and the time through ``at=``. The result is a
:class:`~confide.verify.result.VerifiedEvidence`.
"""

from confide.verify.result import ClaimValue, Platform, TcbEvaluation, TcbStatus, VerifiedEvidence

__all__ = ["ClaimValue", "Platform", "TcbEvaluation", "TcbStatus", "VerifiedEvidence"]
