"""``confide cas attest --out FILE`` writes the pinned certificate to FILE and nowhere else: not
through a symlink planted at a temporary name beside it (a shared directory), and a path it
cannot write is one line (a ``ConfideError``), not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from confide.cas import pin
from confide.errors import ConfideError, UsageError

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _pinned() -> pin.PinnedCas:
    return pin.PinnedCas("https://cas", PEM, "ab" * 32, "log-key", None)  # type: ignore[arg-type]


def test_the_pin_is_written_whole_to_the_named_file(tmp_path: Path) -> None:
    out = tmp_path / "cas.pem"
    out.write_bytes(b"old")
    pin.write_pin(_pinned(), out)
    assert out.read_bytes() == PEM
    assert [p.name for p in tmp_path.iterdir()] == ["cas.pem"]  # no temporary file left


def test_a_symlink_at_the_temporary_names_is_not_written_through(tmp_path: Path) -> None:
    """The temporary file's name was fixed (``.NAME.tmp``) and opened following symlinks: whoever
    could write the directory (``/tmp``) made the pin overwrite a file of their choosing with
    the user's rights (root's, for a pin written by an installer)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "cas.pem"
    (tmp_path / ".cas.pem.tmp").symlink_to(victim)
    pin.write_pin(_pinned(), out)
    assert victim.read_bytes() == b"precious"
    assert out.read_bytes() == PEM and not out.is_symlink()


@pytest.mark.parametrize("where", ["missing/cas.pem", "."])
def test_a_path_that_cannot_be_written_is_a_confide_error(tmp_path: Path, where: str) -> None:
    with pytest.raises(ConfideError, match="--out") as info:
        pin.write_pin(_pinned(), tmp_path / where)
    assert isinstance(info.value, UsageError)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
