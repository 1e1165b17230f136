"""Policies: the language (a typed model of the SCONE session language v0.3, extended to more
platforms), loading from YAML with precise error locations, the canonical hash, appraisal of
verified evidence, and the secret placeholder rules.

Public names::

    load_policy(path) / loads_policy(text)   -> Policy       (PolicyError on any problem)
    policy_hash(policy)                       -> hex SHA-256 of the RFC 8785 canonical JSON
    appraise(evidence, policy, service, at=, devices=()) -> AppraisalResult (every mismatch listed;
        devices: the verified GPU reports sent with CPU evidence)
    is_authorized(rules, identities, creator=) -> bool (access lists and policy boards)
    command_warnings(policy)                  -> one line per service and secret its command's
        arguments name (readable in /proc/PID/cmdline; a warning, not a refusal)
    policy_warnings(policy)                   -> command_warnings, then one line per injection file
        whose permission lets group or others read it, then one per attestation variant the
        policy's tolerances let nothing match (gce-tpm without vtpm-only, nvidia-gpu alone
        without gpu-only)
"""

from confide.policy.access import is_authorized
from confide.policy.appraise import AppraisalResult, Reason, appraise, raise_for_result
from confide.policy.canonical import canonical_json, policy_hash
from confide.policy.loader import load_policy, loads_policy
from confide.policy.model import (
    Policy,
    Service,
    Tolerance,
    command_secret_warning,
    command_warnings,
    injection_file_warning,
    policy_warnings,
)
from confide.policy.problems import Problem

__all__ = [
    "AppraisalResult",
    "Policy",
    "Problem",
    "Reason",
    "Service",
    "Tolerance",
    "appraise",
    "canonical_json",
    "command_secret_warning",
    "command_warnings",
    "injection_file_warning",
    "is_authorized",
    "load_policy",
    "loads_policy",
    "policy_hash",
    "policy_warnings",
    "raise_for_result",
]
