"""``confide run --gpus``/``--gpu-index`` and the GPUs' CC ready state
(``nvmlSystemSetConfComputeGpusReadyState``): the ready state is set only after the CAS accepted
the composite attestation, right before the program starts, never on a failure before that;
which GPUs are attested (``--gpu-index``). End to end into an in-process CAS that verifies the
GPU reports under a test NVIDIA PKI (as ``test_runtime_nvidia``), through
``GpuQuoteProvider``/``attest_and_prepare``/``launch``/``supervise`` and through the ``confide
run`` command itself (in this process: its CAS client, NVML library and ``execve`` replaced by
the in-process CAS, :class:`~nvml_fakes.FakeNvml` and a recorder).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas, InProcessClient, RuntimeKey, last_attestation
from confide import errors
from confide.cas.client import CasClient
from confide.runtime import nvidia
from confide.runtime.nvidia import GpuQuoteProvider, NvmlGpuSource, parse_gpu_indices
from confide.runtime.quote import SimQuoteProvider
from confide.runtime.run import Launch, attest_and_prepare, launch, supervise
from gpu_cas import CPU, NOW, NV_MEASUREMENTS, PKI
from nvml_fakes import GPUS, FakeGpus, FakeNvml

SET = "nvmlSystemSetConfComputeGpusReadyState"
GET = "nvmlSystemGetConfComputeGpusReadyState"

POLICY = f"""name: app
version: "0.3"
services:
  - name: ai
    command: /bin/echo --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{CPU}"
      nvidia-gpu:
        count: 2
        measurements: {{22: "{NV_MEASUREMENTS[22].hex()}"}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


@pytest.fixture
def cas(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas", POLICY).verify_with(nvidia_root=PKI.root[0])


def sim_cpu(cas: InProcessCas, measurement: str = CPU) -> SimQuoteProvider:
    return SimQuoteProvider(cas.platform, bytes.fromhex(measurement), clock=lambda: NOW)


class Executed(BaseException):
    """Raised by the recorder that stands in for ``os.execve``."""


class ExecRecorder:
    """Stands in for ``os.execve``: records each call (program, argv, and the NVML calls ``lib``
    had seen until then) and ends ``launch`` with :class:`Executed`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], list[str]]] = []
        self.lib: FakeNvml | None = None

    def watch(self, lib: FakeNvml) -> FakeNvml:
        self.lib = lib
        return lib

    def __call__(self, program: str, argv: list[str], env: dict[str, str]) -> None:
        self.seen.append((program, list(argv), list(self.lib.calls) if self.lib is not None else []))
        raise Executed


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> ExecRecorder:
    recorder = ExecRecorder()
    monkeypatch.setattr(os, "execve", recorder)
    return recorder


# --- the provider and launch, end to end into the CAS ---------------------------------------------


def test_the_ready_state_is_set_after_the_cas_accepted_right_before_exec(
    cas: InProcessCas, execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2))
    warnings: list[str] = []
    provider = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib), ready=True, warn=warnings.append)
    client = InProcessClient(cas.cas)
    plan = attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    # Read before anything was sent (and found unset: no warning); not set yet.
    assert GET in lib.calls and SET not in lib.calls and lib.ready == 0 and warnings == []
    assert last_attestation(cas.cas)["verdict"] == "accepted"
    with pytest.raises(Executed):
        launch(plan, before_exec=provider.mark_ready)
    [(program, argv, calls_at_exec)] = execs.seen
    assert program == "/bin/echo" and argv[:2] == ["/bin/echo", "--token"]
    assert calls_at_exec[-3:] == [GET, SET, GET]  # set, then read back, then exec
    assert lib.set_values == [1] and lib.ready == 1 and provider.attested == (0, 1)


def test_a_refused_attestation_never_sets_the_ready_state(cas: InProcessCas, execs: ExecRecorder) -> None:
    lib = execs.watch(FakeNvml(2))
    provider = GpuQuoteProvider(sim_cpu(cas, "cd" * 48), NvmlGpuSource(lib), ready=True)
    client = InProcessClient(cas.cas)
    with pytest.raises(errors.AppraisalError):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 1 and last_attestation(cas.cas)["verdict"] == "refused"
    assert SET not in lib.calls and lib.set_values == [] and execs.seen == []


def test_a_failed_launch_before_exec_does_not_set_it(
    cas: InProcessCas, execs: ExecRecorder, tmp_path: Path
) -> None:
    lib = execs.watch(FakeNvml(2))
    provider = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib), ready=True)
    plan = attest_and_prepare(InProcessClient(cas.cas), provider, "app", "ai", [])  # type: ignore[arg-type]
    missing = Launch(["no-such-program-here"], {"PATH": str(tmp_path)}, {}, None)
    with pytest.raises(errors.UsageError, match="no-such-program-here: not found on PATH"):
        launch(missing, before_exec=provider.mark_ready)
    assert SET not in lib.calls and execs.seen == []
    assert plan.argv[0] == "/bin/echo"


def test_the_ready_state_set_already_is_warned_about_and_left(cas: InProcessCas, execs: ExecRecorder) -> None:
    lib = execs.watch(FakeNvml(2, ready=1))
    warnings: list[str] = []
    provider = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib), ready=True, warn=warnings.append)
    plan = attest_and_prepare(InProcessClient(cas.cas), provider, "app", "ai", [])  # type: ignore[arg-type]
    assert len(warnings) == 1 and "set already, before this attestation" in warnings[0]
    assert provider.mark_ready() is True
    assert lib.set_values == [] and execs.seen == []
    assert plan.argv[0] == "/bin/echo"


@pytest.mark.parametrize(
    ("nvml", "error", "match"),
    [
        ({"codes": {SET: 4}}, errors.UsageError, r"NO_PERMISSION \(4\): setting it needs root; the GPUs' ready state was not set \(--gpu-ready-state skip leaves it to you\)$"),
        ({"codes": {SET: 15}}, errors.StorageError, r"NVML_ERROR_GPU_IS_LOST \(15\); the GPUs' ready state was not set"),
        ({"stuck": True}, errors.StorageError, "returned success, but the state is still not set; the GPUs' ready state was not set"),
    ],
)  # fmt: skip
def test_a_failure_to_set_it_stops_before_exec(
    cas: InProcessCas,
    execs: ExecRecorder,
    nvml: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    lib = execs.watch(FakeNvml(2, **nvml))
    provider = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib), ready=True)
    plan = attest_and_prepare(InProcessClient(cas.cas), provider, "app", "ai", [])  # type: ignore[arg-type]
    with pytest.raises(error, match=match) as info:
        launch(plan, before_exec=provider.mark_ready)
    assert type(info.value) is error and execs.seen == []


def test_a_driver_without_the_ready_state_fails_before_anything_is_sent(cas: InProcessCas) -> None:
    lib = FakeNvml(2, missing=(SET,))
    provider = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib), ready=True)
    client = InProcessClient(cas.cas)
    with pytest.raises(
        errors.UsageError, match=r"FUNCTION_NOT_FOUND .*--gpu-ready-state skip leaves it to you"
    ):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 0 and lib.nonces == []
    # With skip, the same driver attests (and nothing reads or sets the state).
    skip = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib))
    attest_and_prepare(client, skip, "app", "ai", [])  # type: ignore[arg-type]
    assert last_attestation(cas.cas)["verdict"] == "accepted" and GET not in lib.calls
    with pytest.raises(errors.UsageError, match="made without ready=True"):
        skip.mark_ready()


@pytest.mark.parametrize(
    ("available", "kwargs"),
    [(3, {"count": 2}), (3, {"indices": [0, 2]}), (2, {"indices": [1]})],
)
def test_the_system_wide_state_is_not_set_for_some_of_the_gpus(
    cas: InProcessCas, available: int, kwargs: dict[str, Any]
) -> None:
    gpus = FakeGpus(available)
    provider = GpuQuoteProvider(sim_cpu(cas), gpus, ready=True, **kwargs)
    client = InProcessClient(cas.cas)
    with pytest.raises(
        errors.UsageError,
        match=f"one for the whole system .* all {available} GPUs take work, but only GPU.* --gpu-ready-state skip$",
    ):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 0 and gpus.events == []


def test_mark_ready_needs_an_attestation_and_the_same_gpus(cas: InProcessCas) -> None:
    gpus = FakeGpus(2)
    provider = GpuQuoteProvider(sim_cpu(cas), gpus, ready=True)
    with pytest.raises(errors.UsageError, match="only after they were attested"):
        provider.mark_ready()
    attest_and_prepare(InProcessClient(cas.cas), provider, "app", "ai", [])  # type: ignore[arg-type]
    gpus.count = 3  # a GPU appeared since the attestation
    with pytest.raises(errors.StorageError, match="3 GPU\\(s\\) now, 2 when they were attested"):
        provider.mark_ready()
    assert "set ready" not in gpus.events and gpus.ready is False
    gpus.count = 2
    assert provider.mark_ready() is False and gpus.events[-3:] == ["get ready", "set ready", "get ready"]


def test_supervise_sets_it_right_before_the_program_starts(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plan = Launch(["/bin/sh", "-c", f"echo ran > {marker}"], {"PATH": "/bin:/usr/bin"}, {}, None)
    order: list[str] = []

    def ready() -> None:
        order.append(f"ready, program ran: {marker.exists()}")

    assert supervise(plan, None, before_exec=ready) == 0  # type: ignore[arg-type]  # no volumes: no CAS call
    assert order == ["ready, program ran: False"] and marker.exists()

    def fails() -> None:
        raise errors.UsageError("NVML ... setting it needs root")

    marker.unlink()
    with pytest.raises(errors.UsageError, match="needs root"):
        supervise(plan, None, before_exec=fails)  # type: ignore[arg-type]
    assert not marker.exists()


# --- choosing GPUs -----------------------------------------------------------------------------------


def test_gpus_by_index_end_to_end(cas: InProcessCas) -> None:
    gpus = FakeGpus(3)
    provider = GpuQuoteProvider(sim_cpu(cas), gpus, indices=[2, 0])
    client = InProcessClient(cas.cas)
    plan = attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert plan.argv[0] == "/bin/echo" and provider.attested == (2, 0)
    assert [k for k, _ in gpus.asked] == [2, 0]
    event = last_attestation(cas.cas)
    assert event["verdict"] == "accepted" and [g["slot"] for g in event["gpus"]] == ["gpu0", "gpu1"]


def test_gpu_index_order_is_the_slot_order(cas: InProcessCas) -> None:
    evidence = GpuQuoteProvider(sim_cpu(cas), FakeGpus(3), indices=[2, 0]).get_evidence(
        RuntimeKey(cas.cas).binding
    )
    assert sorted(evidence.aux) == ["gpu0", "gpu0.certs", "gpu1", "gpu1.certs"]
    assert (
        evidence.aux["gpu0.certs"] == GPUS[2].chain_pem()
        and evidence.aux["gpu1.certs"] == GPUS[0].chain_pem()
    )


def test_a_wrong_nonce_names_the_slot_and_the_gpu(cas: InProcessCas) -> None:
    gpus = FakeGpus(3, lambda k, n: bytes(32) if k == 2 else n)
    provider = GpuQuoteProvider(sim_cpu(cas), gpus, indices=[0, 2])
    client = InProcessClient(cas.cas)
    with pytest.raises(
        errors.BindingError, match=r"^gpu1 \(GPU 2\): the GPU's report carries SPDM nonce 0000"
    ):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 0


def test_an_index_the_machine_does_not_have(cas: InProcessCas) -> None:
    gpus = FakeGpus(3)
    provider = GpuQuoteProvider(sim_cpu(cas), gpus, indices=[0, 3])
    client = InProcessClient(cas.cas)
    with pytest.raises(
        errors.UsageError, match=r"^--gpu-index: got GPU 3, expected 0 to 2 \(this machine has 3 GPU\(s\)\)$"
    ):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 0 and gpus.asked == []


@pytest.mark.parametrize(
    ("text", "indices"),
    [
        ("0", (0,)),
        ("0,2", (0, 2)),
        ("2,0", (2, 0)),
        ("7,6,5,4,3,2,1,0", (7, 6, 5, 4, 3, 2, 1, 0)),
        ("1023", (1023,)),
    ],
)
def test_parse_gpu_indices(text: str, indices: tuple[int, ...]) -> None:
    assert parse_gpu_indices(text) == indices


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"got '' in '', expected GPU indices separated by commas"),
        ("0,", "got '' in '0,'"),
        (",1", "got '' in ',1'"),
        ("-1", "got '-1'"),
        (" 1", "got ' 1'"),
        ("0x1", "got '0x1'"),
        ("\u0661", "got '\u0661'"),  # an Arabic-Indic digit: not ASCII
        ("10000", "got '10000'"),
        ("1024", "got 1024, expected GPU indices 0 to 1023"),
        ("0,0", "got GPU 0 twice, expected each GPU once"),
        ("1,01", "got GPU 1 twice"),
        ("0,1,2,3,4,5,6,7,8", "got 9 GPUs, expected 1 to 8"),
    ],
)
def test_parse_gpu_indices_refuses(text: str, match: str) -> None:
    with pytest.raises(errors.UsageError, match=f"^--gpu-index: {match}"):
        parse_gpu_indices(text)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 1, "indices": [0]}, "give a GPU count or GPU indices, not both"),
        ({"indices": []}, "GPU indices: got 0 GPUs, expected 1 to 8"),
        ({"indices": [1, 1]}, "GPU indices: got GPU 1 twice"),
        ({"indices": [True]}, "GPU indices: got True, expected GPU indices 0 to 1023"),
        ({"indices": [-1]}, "GPU indices: got -1"),
    ],
)
def test_provider_refuses_bad_selections(cas: InProcessCas, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(errors.UsageError, match=match):
        GpuQuoteProvider(sim_cpu(cas), FakeGpus(2), **kwargs)


# --- the confide run command, in this process ---------------------------------------------------------


class _Client(InProcessClient):
    def close(self) -> None:
        pass


@pytest.fixture
def confide_run(
    cas: InProcessCas,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> Callable[..., tuple[int | None, str, _Client]]:
    """``confide run --config-id app/ai --tee sim ARGS -- /bin/echo`` with ``lib`` as the NVML
    library and ``cpu`` as the simulated CPU's measurement: (exit code, or None when it exec'd;
    stderr; the CAS client)."""

    def run(*args: str, lib: FakeNvml, cpu: str = CPU) -> tuple[int | None, str, _Client]:
        from confide import cli

        client = _Client(cas.cas)
        monkeypatch.setattr(CasClient, "from_env", classmethod(lambda cls: client))
        monkeypatch.setattr(nvidia, "NvmlGpuSource", lambda: NvmlGpuSource(lib))
        monkeypatch.setattr(SimQuoteProvider, "for_command", classmethod(lambda cls, d, c: sim_cpu(cas, cpu)))
        monkeypatch.setenv("CONFIDE_SIM_DIR", str(tmp_path))
        argv = ["confide", "run", "--config-id", "app/ai", "--tee", "sim", *args, "--", "/bin/echo"]
        monkeypatch.setattr(sys, "argv", argv)
        code: int | None = None
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        except Executed:
            code = None
        return code, capsys.readouterr().err, client

    return run


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("confide run: SIMULATED TEE")]


def test_confide_run_sets_the_ready_state_then_execs(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2))
    code, stderr, client = confide_run("--gpus", "all", lib=lib)
    assert code is None and client.attested == 1
    [(program, _argv, calls_at_exec)] = execs.seen
    assert program == "/bin/echo" and calls_at_exec[-2:] == [SET, GET] and lib.set_values == [1]
    assert "GPU(s) 0, 1 attested and accepted by the CAS: ready state set" in stderr


def test_confide_run_gpu_index_and_the_default_set(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2))
    code, stderr, _ = confide_run("--gpu-index", "1,0", "--gpu-ready-state", "set", lib=lib)
    assert code is None and len(execs.seen) == 1 and lib.set_values == [1]
    assert "GPU(s) 1, 0 attested" in stderr


def test_confide_run_skip_leaves_the_ready_state_alone(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(3))
    # skip: attesting 2 of 3 GPUs is allowed, nothing reads or sets the state
    code, stderr, _ = confide_run("--gpu-index", "0,2", "--gpu-ready-state", "skip", lib=lib)
    assert code is None and len(execs.seen) == 1
    assert GET not in lib.calls and SET not in lib.calls and "ready state" not in stderr


def test_confide_run_already_set(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2, ready=1))
    code, stderr, _ = confide_run("--gpus", "2", lib=lib)
    assert code is None and len(execs.seen) == 1 and lib.set_values == []
    assert "confide run: warning: the GPUs' ready state is set already, before this attestation" in stderr
    assert "the GPUs' ready state was set already (left as it is)" in stderr


def test_confide_run_without_permission_exits_with_one_line(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2, codes={SET: 4}))
    code, stderr, client = confide_run("--gpus", "all", lib=lib)
    assert code == errors.UsageError.exit_code and execs.seen == [] and client.attested == 1
    [line] = _error_lines(stderr)
    assert line.startswith(
        "error: UsageError: NVML nvmlSystemSetConfComputeGpusReadyState: NVML_ERROR_NO_PERMISSION"
    )
    assert "needs root" in line and "--gpu-ready-state skip" in line


def test_confide_run_refused_by_the_cas_never_sets_it(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2))
    code, stderr, client = confide_run("--gpus", "all", lib=lib, cpu="cd" * 48)
    assert code == errors.AppraisalError.exit_code and client.attested == 1
    assert execs.seen == [] and SET not in lib.calls and lib.ready == 0
    assert len(_error_lines(stderr)) == 1


def test_confide_run_some_gpus_with_set_is_refused_before_the_cas(
    confide_run: Callable[..., tuple[int | None, str, _Client]], execs: ExecRecorder
) -> None:
    lib = execs.watch(FakeNvml(2))
    code, stderr, client = confide_run("--gpus", "1", lib=lib)
    assert code == errors.UsageError.exit_code and client.attested == 0 and execs.seen == []
    [line] = _error_lines(stderr)
    assert "one for the whole system" in line and "only GPU(s) 0 are attested" in line
