"""confide.linux_ioctl: _IOWR numbers as include/uapi/asm-generic/ioctl.h computes them."""

from __future__ import annotations

import pytest

from confide.linux_ioctl import iowr


def test_iowr_matches_kernel_numbers() -> None:
    # SNP_GET_DERIVED_KEY = _IOWR('S', 0x1, struct snp_guest_request_ioctl) (32 bytes).
    assert iowr(ord("S"), 0x1, 32) == 0xC0205301
    # NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw) (32 bytes).
    assert iowr(0x0A, 0, 32) == 0xC0200A00
    # Each field lands in its own bits.
    assert iowr(0xFF, 0xFF, (1 << 14) - 1) == 0xFFFFFFFF
    assert iowr(0, 0, 0) == 0xC0000000


@pytest.mark.parametrize(
    ("kind", "nr", "size", "field"),
    [(256, 0, 0, "type"), (-1, 0, 0, "type"), (0, 256, 0, "nr"), (0, 0, 1 << 14, "size")],
)
def test_iowr_rejects_fields_that_do_not_fit(kind: int, nr: int, size: int, field: str) -> None:
    with pytest.raises(ValueError, match=f"ioctl {field} "):
        iowr(kind, nr, size)
