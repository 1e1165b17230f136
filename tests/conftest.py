from __future__ import annotations

import gc
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from cas_harness import PostgresCluster
    from confide.runtime.tpm import Tpm

ASSETS = Path(__file__).parent / "assets"

# Property tests give the same outcome on every run and every machine: examples are derived from
# each test (derandomize), not from a random seed or a failure database kept from an earlier run,
# and no outcome depends on how fast the machine is (no per-example deadline; no "too slow" health
# check): on a loaded 2-vCPU CI machine a 200 ms deadline fails at random. A test that needs other
# values still sets them with @settings (which overrides only the values it names).
settings.register_profile(
    "confide", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("confide")

# Coverage: `make test` traces the test processes (pytest-cov), which makes pure-Python CPU work
# about 1.5 times slower (measured 2026-12-07). The sweeps that spend seconds of CPU re-running
# code that other tests cover (exhaustive Merkle proofs, every flipped byte of a report,
# property tests of the parsers) are marked `@pytest.mark.no_cover`: pytest-cov pauses tracing
# for them, so they check as much and the CI stays within its time budget. Do not mark a test
# whose lines no other test reaches (the coverage report would lose them).


@pytest.fixture(scope="session", autouse=True)
def _own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``$XDG_CACHE_HOME`` of this test process and of the processes it starts: a directory of
    its own, not the user's ``~/.cache``. confide caches there what it fetched or built (the DCAP
    collateral, VCEKs, the runtime layers of ``confide sconify``): the tests left a runtime layer
    in the user's cache at each run, shared by every worktree and every pytest-xdist worker at
    once, and a test could pass on what another checkout's code had cached. One per process
    (pytest's base temporary directory is per xdist worker): its tests still share it, as one
    user's commands do. A test that sets the variable itself (monkeypatch) still wins."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture
def assets() -> Path:
    return ASSETS


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A TCP port of 127.0.0.1 that refuses connections during the test (a server that is down)."""
    from cas_harness import refusing_port

    with refusing_port() as port:
        yield port


@pytest.fixture(autouse=True)
def _no_leaked_connection(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on PostgreSQL that leaves a psycopg connection unclosed (an engine not disposed, a
    connection returned to a pool already disposed) fails itself, at its teardown (torn down
    after the test's own fixtures): otherwise the connection's ResourceWarning is raised by
    whichever later test the garbage collector happens to run in. Only tests that use the
    ``postgres`` fixture pay for the collection."""
    yield
    if "postgres" not in request.fixturenames:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if leaked:
        pytest.fail(f"{len(leaked)} resource(s) left unclosed by this test: {'; '.join(leaked)[:500]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the whole test session (unit tests of the in-process
    CAS on PostgreSQL, and the CAS processes of tests/integration)."""
    from cas_harness import PostgresCluster, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (make test installs them)")
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def swtpm_tpm() -> Iterator[Tpm]:
    """A client of one real swtpm (TPM 2.0) for the whole test session, started up."""
    from confide.runtime.tpm import TcpTransport, Tpm
    from tpm_fakes import start_swtpm

    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed (Debian package swtpm, installed by `make`)")
    with start_swtpm() as emulator:
        tpm = Tpm(TcpTransport("127.0.0.1", emulator.port))
        tpm.startup()
        try:
            yield tpm
        finally:
            tpm.close()
