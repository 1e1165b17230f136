"""Linux ioctl request numbers, for the TEE guest devices driven with ``fcntl.ioctl``
(``/dev/sev-guest``, ``/dev/nsm``)."""

from __future__ import annotations

__all__ = ["iowr"]

# include/uapi/asm-generic/ioctl.h: nr (8 bits) at bit 0, type (8 bits) at bit 8, size
# (14 bits) at bit 16, dir (2 bits) at bit 30; _IOC_WRITE = 1, _IOC_READ = 2.
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_TYPESHIFT = _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE = 1
_IOC_READ = 2


def iowr(kind: int, nr: int, size: int) -> int:
    """``_IOWR(type, nr, size)`` (include/uapi/asm-generic/ioctl.h): a read-write request on a
    ``size``-byte argument. Raises ``ValueError`` when a field does not fit its bits."""
    for name, value, bits in (
        ("type", kind, _IOC_TYPEBITS),
        ("nr", nr, _IOC_NRBITS),
        ("size", size, _IOC_SIZEBITS),
    ):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"ioctl {name} {value} does not fit in {bits} bits")
    return (
        ((_IOC_READ | _IOC_WRITE) << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (kind << _IOC_TYPESHIFT) | nr
    )
