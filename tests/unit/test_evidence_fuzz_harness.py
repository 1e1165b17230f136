"""The atheris harness tests/fuzz/evidence_fuzz.py cannot rot: every target runs once on each
of its seeds (without atheris, as ``--seeds`` does), the seeds that are valid evidence verify,
and a byte changed inside the signed part of one does not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).parents[1] / "fuzz" / "evidence_fuzz.py"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("evidence_fuzz", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence_fuzz"] = module
    spec.loader.exec_module(module)
    return module


def test_every_target_has_seeds(harness: ModuleType) -> None:
    seeds = harness.seeds()
    assert set(seeds) == set(harness.TARGETS)
    assert all(seeds.values())


@pytest.mark.parametrize(
    "target",
    ["dcap-quote", "dcap-collateral", "dcap-resigned", "tdx-eventlog", "sev-snp", "snp-cert-table", "nvidia", "nvidia-rim",
     "nitro", "azure-vtpm", "gce-tpm", "gce-tee", "sim"],
)  # fmt: skip
def test_each_target_runs_on_its_seeds(harness: ModuleType, target: str) -> None:
    items = harness.seeds()[target]
    verified = [harness.run_once(target, item) for item in items]
    if target in ("dcap-quote", "dcap-collateral"):
        # A DCAP seed verifies exactly when its case says so (tests/dcap_cases.py); the bare TCB
        # Info / QE Identity seeds after dcap-collateral's bundles are not bundles.
        bundles = len(harness.seeds()["dcap-quote"])
        want = [isinstance(harness.DCAP_CASES[item[0]].expected, tuple) for item in items[:bundles]]
        want += [False] * (len(items) - bundles)
        assert verified == want
    else:
        assert all(verified), verified


@pytest.mark.parametrize(
    ("target", "offset"),
    [
        ("dcap-quote", 1 + 48 + 100),
        ("sev-snp", 1 + 0x90),
        ("sim", 1 + 20),
        ("gce-tpm", 1 + 200),
        ("gce-tee", 1 + 200),
    ],
)
def test_a_change_inside_the_signed_bytes_does_not_verify(
    harness: ModuleType, target: str, offset: int
) -> None:
    seed = harness.seeds()[target][0]
    assert harness.run_once(target, seed)
    changed = bytearray(seed)
    changed[offset] ^= 0x01
    assert not harness.run_once(target, bytes(changed))


def test_the_oracle_refuses_another_outcome(harness: ModuleType) -> None:
    """A result that differs from the seed's is a finding (AssertionError), not a pass."""
    case = harness._SIM[0]
    other = harness._SIM[1]
    result = harness.platforms.verify_request(other.request(other.seed))
    with pytest.raises(AssertionError):
        harness._check_verified("sim", 0, case, result)
