"""``confide ledger keygen --out FILE`` writes the private key to a new FILE of mode 0600, and a
FILE it cannot create (its directory missing) is one line (exit 2), not a Python traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from confide.ledger import cli as ledger_cli


def _keygen(out: Path) -> tuple[int, str]:
    result = CliRunner().invoke(ledger_cli.ledger, ["keygen", "--name", "log", "--out", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_the_key_is_written_to_a_new_file_of_mode_0600(tmp_path: Path) -> None:
    out = tmp_path / "log.key"
    code, output = _keygen(out)
    assert code == 0 and output.startswith("log+")
    assert out.read_text().startswith("PRIVATE+KEY+log+") and out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["missing/log.key", "."])
def test_a_path_that_cannot_be_created_is_a_usage_error(tmp_path: Path, where: str) -> None:
    code, output = _keygen(tmp_path / where)
    assert code == 2 and output.startswith("error: UsageError: --out"), output
