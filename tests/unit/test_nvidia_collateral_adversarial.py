"""Hostile NVIDIA RIM service answers and hostile cache files (``cas serve --nvidia-rim URL``,
:mod:`confide.cas.rims`; the files: :mod:`confide.cas.cache_files`, shared with the OCSP cache).

A fake RIM service on 127.0.0.1 serves RIMs signed under a test RIM PKI (``gpu_cas``)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide import errors
from confide.cas.cache_files import CacheFiles
from confide.cas.rims import RimCache
from confide.collateral.nvidia_ocsp import DirOcspSource
from confide.collateral.nvidia_rim import DirRimSource, HttpRimSource, rim_id_version, rim_targets
from confide.evidence.nvidia import NvidiaAttestationReport
from gpu_cas import DRIVER_ID, NOW, NV_REPORT, PKI, RIM_PKI, VBIOS_ID, driver_rim, vbios_rim
from rim_fake import FakeRimService, fake_rim_service

DRIVER, VBIOS = driver_rim(), vbios_rim()


@pytest.fixture
def service() -> Iterator[FakeRimService]:
    with fake_rim_service() as server:
        server.serve_rim(DRIVER_ID, DRIVER)
        server.serve_rim(VBIOS_ID, VBIOS)
        yield server


def _cache(service: FakeRimService, directory: Path | None = None) -> RimCache:
    return RimCache(
        HttpRimSource(service.base_url, timeout=30),
        where="NVIDIA RIM service",
        kind="service",
        root=RIM_PKI.root,
        directory=directory,
    )


def test_rim_id_version_inverts_the_rim_ids_of_a_report() -> None:
    """The version a RIM ID names is the one :func:`rim_targets` built it from."""
    for rim_id, version in rim_targets(NvidiaAttestationReport.from_bytes(NV_REPORT)):
        assert rim_id_version(rim_id) == version.lower()
    assert rim_id_version("NV_GPU_VBIOS_NOT_A_VERSION") is None


def test_a_rim_nvidia_signed_for_another_version_is_not_kept_under_this_id(
    service: FakeRimService, tmp_path: Path
) -> None:
    """The VBIOS RIM (signed under the RIM root) answered for the driver's RIM ID: before the fix
    it was kept in memory and on disk under the driver's ID for a day, and every report of that
    driver version was refused (no driver RIM of its version)."""
    service.serve_rim(DRIVER_ID, VBIOS)
    cache = _cache(service, tmp_path / "rim-cache")
    with pytest.raises(errors.CollateralError, match="colloquialVersion"):
        cache.get(DRIVER_ID, NOW)
    assert not (tmp_path / "rim-cache" / f"{DRIVER_ID}.xml").exists()
    service.serve_rim(DRIVER_ID, DRIVER)
    assert cache.prefetch(DRIVER_ID, NOW).raw == DRIVER  # type: ignore[union-attr]


def test_a_cached_rim_of_another_version_is_removed_and_fetched_again(
    service: FakeRimService, tmp_path: Path
) -> None:
    directory = tmp_path / "rim-cache"
    directory.mkdir()
    (directory / f"{DRIVER_ID}.xml").write_bytes(VBIOS)
    cache = _cache(service, directory)
    assert cache.get(DRIVER_ID, datetime.now(UTC)).raw == DRIVER
    assert cache.rejected_files == 1
    assert (directory / f"{DRIVER_ID}.xml").read_bytes() == DRIVER


def test_a_fifo_in_a_cache_directory_is_not_waited_on(service: FakeRimService, tmp_path: Path) -> None:
    """A FIFO in place of a cached file (RIM or OCSP cache): before the fix the read waited for
    a writer for ever, holding the prefetch's worker thread and every later fetch of that key."""
    directory = tmp_path / "rim-cache"
    directory.mkdir()
    fifo = directory / f"{DRIVER_ID}.xml"
    os.mkfifo(fifo)
    events: list[tuple[str, str]] = []
    files = CacheFiles(directory, "*.xml", 10, max_size=1024)
    assert _comes_back(
        lambda: files.load(fifo.name, lambda data, mtime: data, lambda *e: events.append(e)), fifo
    )
    assert events == [("unreadable", "NotARegularFile")]
    # The RIM cache asks the service, and its store replaces the FIFO.
    assert _cache(service, directory).get(DRIVER_ID, datetime.now(UTC)).raw == DRIVER
    assert fifo.read_bytes() == DRIVER


def _comes_back(call: Callable[[], object], fifo: Path) -> bool:
    """Whether ``call`` returns or raises within 10 s; if not (it waits on ``fifo``), the FIFO is
    opened for writing and closed so that the thread ends, and ``False``."""
    done = threading.Event()

    def run() -> None:
        with contextlib.suppress(Exception):
            call()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if done.wait(10):
        return True
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(10)
    return False


def test_a_fifo_in_an_operators_rim_or_ocsp_directory_is_refused(tmp_path: Path) -> None:
    """``--nvidia-rim DIR`` and ``--nvidia-ocsp DIR`` (the CAS's and ``evidence verify``'s): a
    FIFO in place of a file blocked the reader (the CAS's prefetch thread) for ever."""
    rim_fifo = tmp_path / f"{DRIVER_ID}.xml"
    os.mkfifo(rim_fifo)
    rims = DirRimSource(tmp_path)
    assert _comes_back(lambda: rims.fetch(DRIVER_ID), rim_fifo)
    with pytest.raises(errors.CollateralMissingError, match="not a regular file"):
        rims.fetch(DRIVER_ID)
    leaf, issuer = PKI.chain[0], PKI.chain[1]
    ocsp_fifo = tmp_path / f"{leaf.serial_number:x}.der"
    os.mkfifo(ocsp_fifo)
    responses = DirOcspSource(tmp_path)
    assert _comes_back(lambda: responses.fetch(leaf, issuer), ocsp_fifo)
    with pytest.raises(errors.CollateralMissingError, match="not a regular file"):
        responses.fetch(leaf, issuer)
