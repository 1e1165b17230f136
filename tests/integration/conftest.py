from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import CasProcess, running_cas


@pytest.fixture(params=["sqlite", "postgresql"])
def cas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CasProcess]:
    db_url = None
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres").new_database()
    with running_cas(tmp_path / "cas", db_url) as proc:
        yield proc
