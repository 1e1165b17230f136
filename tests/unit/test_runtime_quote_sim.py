"""The simulator's QuoteProvider."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide.errors import UsageError
from confide.runtime.quote import QuoteProvider, SimQuoteProvider
from confide.sim.measure import measure_command
from confide.sim.platform import SimPlatform
from confide.verify.result import Platform
from confide.verify.sim import verify_sim

REPORT_DATA = hashlib.sha512(b"ephemeral key || nonce").digest()


def test_sim_provider_produces_verifiable_evidence_for_the_command(tmp_path: Path) -> None:
    SimPlatform.load_or_create(tmp_path / "sim")
    argv = ["sh", "-c", "exit 0"]
    provider: QuoteProvider = SimQuoteProvider.for_command(tmp_path / "sim", argv, svn=3)
    evidence = provider.get_evidence(REPORT_DATA)
    assert evidence.platform is Platform.SIMULATED
    assert evidence.provider == "sim"
    platform = SimPlatform.load(tmp_path / "sim")
    result = verify_sim(evidence.raw, platform.public_key, at=datetime.now(UTC))
    assert result.claims["measurement"] == measure_command(argv).hex
    assert result.claims["report_data"] == REPORT_DATA.hex()
    assert result.claims["svn"] == 3
    assert result.claims["debug"] is False


def test_sim_provider_uses_the_injected_clock_and_checks_the_report_data_size() -> None:
    platform = SimPlatform.generate()
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    provider = SimQuoteProvider(platform, bytes(48), debug=True, clock=lambda: at)
    result = verify_sim(provider.get_evidence(REPORT_DATA).raw, platform.public_key, at=at)
    assert result.claims["timestamp"] == int(at.timestamp())
    assert result.claims["debug"] is True
    with pytest.raises(UsageError, match="expected 64"):
        provider.get_evidence(b"short")


def test_sim_provider_needs_an_existing_platform_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="confide sim init"):
        SimQuoteProvider.for_command(tmp_path / "none", ["sh"])
