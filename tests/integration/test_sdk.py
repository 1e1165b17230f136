"""confide.sdk end to end: a real ``confide cas serve --dev`` over TLS (SQLite), every public
call of the SDK, its error paths (each the class the matching command exits with), that no
result carries a secret value, and the runnable example of docs/sdk.md (examples/sdk)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parents[1]))
import sdk_env
from cas_harness import ROOT, CasProcess, running_cas, wait_for_log
from confide import errors
from confide.ledger.note import NoteSigner
from confide.policy import command_secret_warning, loads_policy
from confide.sdk import (
    AsyncCas,
    Cas,
    Evidence,
    Identity,
    PolicyInfo,
    QuoteProvider,
    Release,
    create_identity,
    load_identity,
    measure,
)
from pki import self_signed_pem
from sdk_env import command, pki_policy

SECRET_VALUE = "explicit-value-Xq81"  # an explicit secret value: withheld from every reader
SERVICE = ROOT / "examples" / "sdk" / "service.py"


@pytest.fixture(scope="module")
def cas_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasProcess]:
    with running_cas(tmp_path_factory.mktemp("sdk") / "cas", None) as proc:
        yield proc


@pytest.fixture
def cas(cas_proc: CasProcess) -> Iterator[Cas]:
    with Cas.from_env(cas_proc.env) as connected:
        yield connected


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide", *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip


app_policy = functools.partial(sdk_env.app_policy, secret_value=SECRET_VALUE)


# --- connecting ----------------------------------------------------------------------------------


def test_connect_from_env_file_and_given_certificate(cas_proc: CasProcess) -> None:
    env = cas_proc.env
    with Cas.from_env_file(cas_proc.data_dir / "client.env") as a:
        assert (a.url, a.log_key, a.sim_dir) == (env["CONFIDE_CAS_URL"], env["CONFIDE_LOG_KEY"],
                                                 Path(env["CONFIDE_SIM_DIR"]))  # fmt: skip
        key = a.cas_key_sha256
        assert key is not None and len(key) == 64
    assert a._client.http.is_closed  # the context manager closed the connection
    pem = Path(env["CONFIDE_CAS_CERT"]).read_bytes()
    for cert in (Path(env["CONFIDE_CAS_CERT"]), pem):
        with Cas.connect(env["CONFIDE_CAS_URL"], ca_cert=cert) as b:
            assert b.cas_key_sha256 == key
            assert b.log_key is None


def test_connect_refusals(cas_proc: CasProcess, tmp_path: Path) -> None:
    env = cas_proc.env
    with pytest.raises(errors.UsageError, match="CONFIDE_CAS_URL is not set"):
        Cas.from_env({})
    with pytest.raises(errors.UsageError, match="CONFIDE_CAS_CERT is not set"):
        Cas.from_env({"CONFIDE_CAS_URL": env["CONFIDE_CAS_URL"]})
    with pytest.raises(errors.UsageError, match="https://"):
        Cas.connect(env["CONFIDE_CAS_URL"].replace("https", "http"), ca_cert=env["CONFIDE_CAS_CERT"])
    with pytest.raises(errors.UsageError, match="cannot read"):
        Cas.from_env_file(tmp_path / "missing.env")
    bad = tmp_path / "bad.env"
    bad.write_text("export CONFIDE_CAS_URL='unterminated\n")
    with pytest.raises(errors.ParseError, match="line 1"):
        Cas.from_env_file(bad)
    # Another certificate than the CAS's: refused on the first request, as the CLI refuses it.
    other = self_signed_pem(tmp_path / "other.pem")
    alice = Identity.generate()
    with (
        Cas.connect(env["CONFIDE_CAS_URL"], ca_cert=other) as wrong,
        pytest.raises(errors.NetworkError, match="not the one this client trusts"),
    ):
        wrong.show("anything", alice)


def test_attested_pins_the_certificate_and_the_log_key(cas_proc: CasProcess) -> None:
    env = cas_proc.env
    sim_key = Path(env["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem"
    with Cas.attested(
        env["CONFIDE_CAS_URL"], sim_key=sim_key, tolerate=["debug-mode"], any_measurement=True
    ) as pinned:
        assert pinned.log_key == env["CONFIDE_LOG_KEY"]
        assert pinned.attestation is not None and pinned.attestation.evidence.simulated
        measurement = str(pinned.attestation.evidence.claims["measurement"])
        alice = Identity.generate()
        with pytest.raises(errors.AccessDeniedError):  # a working, pinned connection
            pinned.show("nothing-here", alice)
    with Cas.attested(
        env["CONFIDE_CAS_URL"], sim_key=sim_key.read_bytes(), measurements=[measurement]
    ) as again:
        assert again.cas_key_sha256 == pinned.cas_key_sha256
    with pytest.raises(errors.MeasurementError):
        Cas.attested(env["CONFIDE_CAS_URL"], sim_key=sim_key, measurements=["00" * 48])
    with pytest.raises(errors.UsageError, match="measurements"):
        Cas.attested(env["CONFIDE_CAS_URL"], sim_key=sim_key, measurements=["xyz"])
    with pytest.raises(errors.UsageError, match="tolerate"):
        Cas.attested(env["CONFIDE_CAS_URL"], sim_key=sim_key, tolerate=["everything"], any_measurement=True)
    with Cas.attested(
        env["CONFIDE_CAS_URL"], sim_key=sim_key, expect={"measurement": [measurement]}
    ) as by_claim:
        assert by_claim.cas_key_sha256 == pinned.cas_key_sha256
        # the log key the evidence pinned is not overridden by another one given to a call
        other = NoteSigner.generate(env["CONFIDE_LOG_KEY"].split("+")[0]).verifier.vkey
        for call in (by_claim.history, by_claim.accesses):
            with pytest.raises(
                errors.UsageError, match="differs from the log key this CAS's attestation pinned"
            ):
                call("nothing-here", alice, log_key=other)
        with pytest.raises(errors.AccessDeniedError):  # the pinned key itself, given again: checked on
            by_claim.history("nothing-here", alice, log_key=" " + env["CONFIDE_LOG_KEY"] + "\n")


def test_a_stakeholder_script_does_not_load_the_runtime() -> None:
    code = (
        "import sys, confide.sdk as sdk; assert 'confide.runtime.run' not in sys.modules; "
        "assert 'Release' in dir(sdk); sdk.Release; assert 'confide.runtime.run' in sys.modules"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr


# --- identities ----------------------------------------------------------------------------------


def test_identities_create_save_load(tmp_path: Path) -> None:
    made = create_identity(tmp_path / "a.id", name="alice")
    assert (tmp_path / "a.id").stat().st_mode & 0o777 == 0o600
    loaded = load_identity(tmp_path / "a.id")
    assert (loaded.fingerprint, loaded.name) == (made.fingerprint, "alice")
    assert "private" not in repr(loaded)
    with pytest.raises(errors.UsageError, match="exists"):
        create_identity(tmp_path / "a.id")
    assert create_identity().fingerprint != made.fingerprint  # in memory only


# --- stakeholders --------------------------------------------------------------------------------


def test_apply_show_events_and_the_cli_agrees(cas: Cas, cas_proc: CasProcess, tmp_path: Path) -> None:
    alice, bob = create_identity(tmp_path / "alice.id"), create_identity(tmp_path / "bob.id")
    m = measure(command(tmp_path))
    text = app_policy("sdk-show", m)
    created = cas.apply(text, alice)  # YAML text
    assert (created.name, created.state, created.active, created.pending) == (
        "sdk-show",
        "active",
        True,
        False,
    )
    # The same policy as a Policy object or a file is the same version: an update needs its predecessor.
    (tmp_path / "p.yaml").write_text(text)
    for again in (loads_policy(text), tmp_path / "p.yaml"):
        with pytest.raises(errors.ConflictError):
            cas.apply(again, alice)
    updated = cas.apply(
        app_policy("sdk-show", m, extra=f"predecessor: {created.hash}\n").replace("size: 24", "size: 25"),
        alice,
    )
    assert updated.active and updated.hash != created.hash
    assert created.warnings == updated.warnings == ()  # secrets in the environment only
    # docs/limitations.md "confide run": a secret in the command's arguments is applied, with
    # the warning `confide policy apply` prints (the service and the secret, never a value)
    cmdline = app_policy("sdk-cmdline", m).replace(
        "  - name: app\n", "  - name: app\n    command: /bin/app --token=$$SCONE::token$$\n", 1
    )
    warned = cas.apply(cmdline, alice)
    assert warned.active and warned.warnings == (command_secret_warning("app", "token"),)

    info = cas.show("sdk-show", alice)
    assert isinstance(info, PolicyInfo)
    assert (info.hash, info.creator) == (updated.hash, alice.fingerprint)
    assert [v.hash for v in info.versions] == [created.hash, updated.hash]
    assert info.versions[1].predecessor == created.hash
    assert info.secrets["token"].kind == "ascii" and info.secrets["token"].version >= 1
    assert SECRET_VALUE not in repr(dataclasses.asdict(info))  # explicit values read "(withheld)"
    assert "(withheld)" in repr(info.document)
    with pytest.raises(TypeError):
        info.document["name"] = "x"  # type: ignore[index]  # read-only

    types = [e.type for e in cas.events("sdk-show", alice)]
    assert types[0] == "policy-created" and "policy-updated" in types

    # Another stakeholder's read: AccessDeniedError, the class `confide policy show` exits with.
    with pytest.raises(errors.AccessDeniedError):
        cas.show("sdk-show", bob)
    with pytest.raises(errors.AccessDeniedError):
        cas.events("sdk-show", bob)
    shown = cli(cas_proc.env, "policy", "show", "sdk-show", "--identity", str(tmp_path / "bob.id"))
    assert shown.returncode == errors.AccessDeniedError.exit_code, shown.stderr


def test_a_bad_policy_is_refused_with_line_and_column_before_anything_is_sent(
    cas: Cas, cas_proc: CasProcess, tmp_path: Path
) -> None:
    alice = create_identity(tmp_path / "alice.id")
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: sdk-bad\nversion: "0.3"\nservices:\n  - name: app\n    nonsense: 1\n')
    with pytest.raises(errors.PolicyError) as caught:
        cas.apply(bad, alice)
    assert type(caught.value) is errors.PolicyError
    located = [p for p in caught.value.problems if getattr(p, "line", None) is not None]
    assert [(p.line, p.column) for p in located] == [(5, 5)]  # type: ignore[attr-defined]
    assert str(bad) in caught.value.message
    with pytest.raises(errors.PolicyError) as caught_text:
        cas.apply("name: sdk-bad\nversion: [\n", alice)  # malformed YAML text
    assert getattr(caught_text.value.problems[0], "line", None) is not None
    applied = cli(cas_proc.env, "policy", "apply", str(bad), "--identity", str(tmp_path / "alice.id"))
    assert applied.returncode == errors.PolicyError.exit_code
    with pytest.raises(errors.UsageError, match="cannot read policy file"):
        cas.apply(tmp_path / "missing.yaml", alice)
    with pytest.raises(errors.AccessDeniedError):  # nothing was created
        cas.show("sdk-bad", alice)


def test_a_board_update_waits_for_approval(cas: Cas, cas_proc: CasProcess, tmp_path: Path) -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    m = measure(command(tmp_path))
    board = f"{{require-all: [{alice.fingerprint}, {bob.fingerprint}]}}"
    created = cas.apply(app_policy("sdk-board", m, update=board), alice)
    update = app_policy("sdk-board", m, update=board, extra=f"predecessor: {created.hash}\n")
    pending = cas.apply(update.replace("size: 24", "size: 30"), alice)
    assert (pending.state, pending.pending) == ("pending", True)
    with pytest.raises(errors.AccessDeniedError):
        cas.approve("sdk-board", pending.hash, carol)
    approved = cas.approve("sdk-board", pending.hash, bob)
    assert (approved.hash, approved.state, approved.active) == (pending.hash, "active", True)
    assert cas.show("sdk-board", alice).hash == pending.hash
    with pytest.raises(errors.ConflictError, match="not pending"):  # approved already
        cas.approve("sdk-board", pending.hash, alice)
    with pytest.raises(errors.ConflictError, match="no submitted version"):
        cas.approve("sdk-board", "ab" * 32, alice)

    history = cas.history("sdk-board", alice)
    by_event = {e.event: e for e in history.entries}
    assert by_event["policy.created"].signer == alice.fingerprint
    assert by_event["policy.submitted"].hash == pending.hash
    assert bob.fingerprint in by_event["policy.updated"].approvers
    # a checkpoint signed by another key is not the CAS's log
    other = NoteSigner.generate(cas_proc.env["CONFIDE_LOG_KEY"].split("+")[0]).verifier.vkey
    assert wait_for_log(cas_proc.env, 1) >= 1
    with pytest.raises(errors.UnknownKeyError):
        cas.history("sdk-board", alice, log_key=other)
    with (
        Cas.connect(cas.url, ca_cert=cas_proc.env["CONFIDE_CAS_CERT"]) as keyless,
        pytest.raises(errors.UsageError, match="no log key"),
    ):
        keyless.history("sdk-board", alice)


def test_history_and_accesses_remember_a_state_file(cas: Cas, cas_proc: CasProcess, tmp_path: Path) -> None:
    alice = Identity.generate()
    created = cas.apply(app_policy("sdk-state", measure(command(tmp_path))), alice)
    # the module's CAS holds the other tests' entries too: wait for a checkpoint over this
    # policy's own (a fixed size such as 3 was often reached before them)
    last = max(e.index for e in cas.events("sdk-state", alice))
    assert wait_for_log(cas_proc.env, last + 1) > last
    state = tmp_path / "view.state"
    first = cas.history("sdk-state", alice, state=state)
    assert first.state is not None and first.state.previous_size is None
    assert first.state.entries_remembered >= 1 and state.stat().st_mode & 0o777 == 0o600
    assert [e.hash for e in first.entries if e.event == "policy.created"] == [created.hash]
    again = cas.history("sdk-state", alice, state=state)
    assert again.state is not None and again.state.previous_size == first.checkpoint_size
    assert again.state.entries_known == first.state.entries_remembered
    found = cas.accesses("sdk-state", alice, state=state)  # the same file, checked again
    assert found == () and found.checkpoint_size >= again.checkpoint_size
    # what the file held, as history says it
    assert found.state is not None and found.state.previous_size == again.checkpoint_size
    assert found.state.entries_known == again.state.entries_remembered
    assert cas.accesses("sdk-state", alice).state is None
    assert cas.history("sdk-state", alice).state is None  # without a file nothing is remembered
    broken = tmp_path / "broken.state"
    broken.write_text("not json")
    with pytest.raises(errors.ParseError):
        cas.history("sdk-state", alice, state=broken)
    assert broken.read_text() == "not json"  # left as it was


# --- services ------------------------------------------------------------------------------------


def test_attest_releases_the_configuration_and_no_result_shows_a_secret(
    cas: Cas, cas_proc: CasProcess, tmp_path: Path
) -> None:
    alice = Identity.generate()
    argv = command(tmp_path)
    cas.apply(app_policy("sdk-svc", measure(argv)), alice)
    release = cas.attest("sdk-svc/app", cas.simulated_provider(argv), dumpable=True)
    assert isinstance(release, Release)
    assert (release.policy, release.service, release.command, release.command_released) == (
        "sdk-svc", "app", (), False
    )  # fmt: skip
    assert release.environment["PINNED"] == SECRET_VALUE
    token = release.environment["TOKEN"]
    assert len(token) == 24
    assert token not in repr(release) and SECRET_VALUE not in repr(release)
    with pytest.raises(TypeError):
        release.environment["TOKEN"] = "x"  # type: ignore[index]

    # What readers get never carries the values the service received.
    wait_for_log(cas_proc.env, 1)
    accesses = cas.accesses("sdk-svc", alice)
    assert len(accesses) == 1
    assert accesses[0].service == "app" and accesses[0].measurement == measure(argv)
    assert {s.name for s in accesses[0].secrets} == {"token", "pinned"}
    assert cas.accesses("sdk-svc", alice, secret="nothing-such") == ()
    shown = (
        cas.show("sdk-svc", alice),
        cas.events("sdk-svc", alice),
        cas.history("sdk-svc", alice),
        accesses,
    )
    text = repr(shown) + repr([dataclasses.asdict(x) for x in (shown[0], shown[2])])
    assert token not in text and SECRET_VALUE not in text


def test_attest_refusals_are_the_classes_confide_run_exits_with(
    cas: Cas, cas_proc: CasProcess, tmp_path: Path
) -> None:
    alice = Identity.generate()
    argv = command(tmp_path)
    cas.apply(app_policy("sdk-refused", measure(argv)), alice)
    (tmp_path / "modified").mkdir()
    other = command(tmp_path / "modified", "echo modified")
    with pytest.raises(errors.AppraisalError, match="measurement"):
        cas.attest("sdk-refused/app", cas.simulated_provider(other), dumpable=True)
    ran = cli(cas_proc.env, "run", "--config-id", "sdk-refused/app", "--tee", "sim", "--", *other)
    assert ran.returncode == errors.AppraisalError.exit_code, ran.stderr
    with pytest.raises(errors.UsageError, match="POLICY/SERVICE"):
        cas.attest("no-service", cas.simulated_provider(argv), dumpable=True)
    with (
        Cas.connect(cas.url, ca_cert=cas_proc.env["CONFIDE_CAS_CERT"]) as no_sim,
        pytest.raises(errors.UsageError, match="CONFIDE_SIM_DIR"),
    ):
        no_sim.simulated_provider(argv)


def test_a_cas_without_a_successor_board_refuses_its_calls(cas: Cas) -> None:
    for call in (cas.successor, cas.board_changes, cas.retirements):
        with pytest.raises(errors.UsageError, match="hands its master key over to no other version"):
            call()


def test_crl_and_revoke(cas: Cas, tmp_path: Path) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    policy = pki_policy("sdk-pki", "SDK CA", update=f"[CREATOR, {bob.fingerprint}]")
    cas.apply(policy, alice)
    serial = cas.show("sdk-pki", alice).secrets["srv"].serial
    assert serial is not None
    with pytest.raises(errors.UsageError, match="exactly one"):
        cas.revoke("sdk-pki", "srv", alice)
    with pytest.raises(errors.UsageError, match="exactly one"):
        cas.revoke("sdk-pki", "srv", alice, serial=serial, all_valid=True)
    with pytest.raises(errors.AccessDeniedError):
        cas.revoke("sdk-pki", "srv", Identity.generate(), serial=serial)
    with pytest.raises(errors.PolicyError, match="no such secret"):
        cas.revoke("sdk-pki", "nothing", alice, all_valid=True)
    done = cas.revoke("sdk-pki", "srv", alice, serial=serial, reason="keyCompromise")
    assert (done.name, done.secret, done.reason) == ("sdk-pki", "srv", "keyCompromise")
    assert [r.get("serial") for r in done.revoked] == [serial]
    assert done.crls and done.key_replaced
    crl = x509.load_der_x509_crl(cas.crl("sdk-pki", "ca", alice))
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert cas.crl("sdk-pki", "ca", alice, pem=True).startswith(b"-----BEGIN X509 CRL-----")
    with pytest.raises(errors.AccessDeniedError):
        cas.crl("sdk-pki", "ca", None)  # not declared export_public
    assert cas.show("sdk-pki", alice).secrets["srv"].serial != serial  # re-issued


# --- asyncio -------------------------------------------------------------------------------------


class SlowProvider:
    """A quote provider that blocks its thread for ``delay`` seconds before the real one answers
    (a slow TEE driver), recording when each call ran."""

    def __init__(
        self, inner: QuoteProvider, delay: float, spans: list[tuple[str, float, float]], tag: str
    ) -> None:
        self.inner, self.delay, self.spans, self.tag = inner, delay, spans, tag

    def get_evidence(self, report_data: bytes) -> Evidence:
        start = time.monotonic()
        time.sleep(self.delay)
        assert threading.current_thread() is not threading.main_thread()  # never on the loop's thread
        evidence = self.inner.get_evidence(report_data)
        self.spans.append((self.tag, start, time.monotonic()))
        return evidence


def test_async_cas_keeps_the_event_loop_running(cas_proc: CasProcess, tmp_path: Path) -> None:
    """AsyncCas: calls run in worker threads (a heartbeat task keeps ticking through a second of
    blocking work), calls on one object one at a time, on two objects at once; a refusal is
    raised through await as the class the command exits with; ``async with`` closes."""
    alice = Identity.generate()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    argv_a, argv_b = command(tmp_path / "a", "echo a"), command(tmp_path / "b", "echo b")
    spans: list[tuple[str, float, float]] = []
    ticks: list[float] = []
    delay = 0.8

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def scenario() -> tuple[AsyncCas, float, float]:
        async with (
            await AsyncCas.from_env(cas_proc.env) as a,
            await AsyncCas.from_env_file(cas_proc.data_dir / "client.env") as b,
        ):
            assert (a.url, a.log_key, repr(a)) == (cas_proc.env["CONFIDE_CAS_URL"], cas_proc.env["CONFIDE_LOG_KEY"],
                                                   f"AsyncCas(url={a.url!r})")  # fmt: skip
            await asyncio.gather(
                a.apply(app_policy("sdk-async-a", measure(argv_a)), alice),
                b.apply(app_policy("sdk-async-b", measure(argv_b)), alice),
            )
            slow_a1 = SlowProvider(await a.simulated_provider(argv_a), delay, spans, "a1")
            slow_a2 = SlowProvider(await a.simulated_provider(argv_a), delay, spans, "a2")
            slow_b = SlowProvider(await b.simulated_provider(argv_b), delay, spans, "b")
            stop = asyncio.Event()
            beating = asyncio.create_task(heartbeat(stop))
            started = time.monotonic()
            released = await asyncio.gather(
                a.attest("sdk-async-a/app", slow_a1, dumpable=True),
                a.attest("sdk-async-a/app", slow_a2, dumpable=True),
                b.attest("sdk-async-b/app", slow_b, dumpable=True),
                b.show("sdk-async-b", alice),
                a.events("sdk-async-a", alice),
            )
            ended = time.monotonic()
            stop.set()
            await beating
            assert [r.policy for r in released[:3]] == ["sdk-async-a", "sdk-async-a", "sdk-async-b"]
            assert released[3].name == "sdk-async-b"
            with pytest.raises(errors.AccessDeniedError) as refused:
                await a.show("sdk-async-a", Identity.generate())
            assert refused.value.exit_code == errors.AccessDeniedError.exit_code
            with pytest.raises(errors.UsageError, match="POLICY/SERVICE"):
                await b.attest("no-service", slow_b, dumpable=True)
        return a, started, ended

    a, started, ended = asyncio.run(scenario())
    assert a._cas._client.http.is_closed  # async with closed the connection
    by_tag = {tag: (start, end) for tag, start, end in spans}
    # one object's calls one at a time: a1 and a2 do not overlap; another object's do
    (s1, e1), (s2, _e2) = sorted([by_tag["a1"], by_tag["a2"]])
    assert e1 <= s2
    assert by_tag["b"][0] < e1 and s1 < by_tag["b"][1]
    assert ended - started >= 2 * delay  # a's two calls, one after the other
    # the loop kept running: no gap between ticks near the providers' blocking sleeps
    during = [t for t in ticks if started <= t <= ended]
    gaps = [later - earlier for earlier, later in zip([started, *during], [*during, ended], strict=True)]
    assert len(during) > 20 and max(gaps) < delay / 2, max(gaps)


# --- the worked example --------------------------------------------------------------------------
# Each example names its policies with a new run id, so it runs again on the same CAS (the docs
# point them all at /tmp/cas); each is run twice here, the second time on the first's CAS.


def run_example(name: str, env_file: Path, work: Path) -> str:
    ran = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sdk" / name), str(env_file), str(work)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout


def test_the_example_of_docs_sdk_runs(tmp_path: Path) -> None:
    with running_cas(tmp_path / "cas", None) as proc:
        outs = [
            run_example("two_stakeholders.py", proc.data_dir / "client.env", tmp_path / f"work{i}")
            for i in (1, 2)
        ]
    names = set()
    for out in outs:
        lab = re.search(r"^lab applied (analytics-[0-9a-f]{8}): ", out, re.M)
        assert lab is not None, out
        names.add(lab[1])
        hospital = lab[1].replace("analytics-", "hospital-")
        assert "service: exit 0:" in out and '"data_key_hex_chars": 64' in out
        assert f"modified service: exit {errors.AppraisalError.exit_code}: error: AppraisalError" in out
        assert f"hospital reads {lab[1]}: AccessDeniedError (exit 33)" in out
        assert f"secrets [{lab[1]}/db_pass v1, {hospital}/data_key v1], included in the log" in out
        assert out.rstrip().endswith("OK")
    assert len(names) == 2


def test_an_example_refuses_a_work_directory_in_use(cas_proc: CasProcess, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hospital.id").write_text("an earlier run's")
    ran = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sdk" / "two_stakeholders.py"),
         str(cas_proc.data_dir / "client.env"), str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert (
        ran.stderr
        == f"error: {tmp_path / 'work'} is not empty: give a new WORKDIR (the example writes identities there)\n"
    )


def test_the_async_example_runs(cas_proc: CasProcess, tmp_path: Path) -> None:
    for i in (1, 2):
        out = run_example("async_audit.py", cas_proc.data_dir / "client.env", tmp_path / f"work{i}")
        name = re.search(r"^applied (audited-[0-9a-f]{8}): .* \(active\)$", out, re.M)
        assert name is not None, out
        assert "history: ['policy.created']" in out and "log verified: size " in out
        assert "previous size None" in out and (tmp_path / f"work{i}" / "auditor.json").exists()
        exit_code = errors.AccessDeniedError.exit_code
        assert f"stranger reads {name[1]}: AccessDeniedError (exit {exit_code})" in out
        assert out.rstrip().endswith("OK")


def test_the_volume_example_runs(cas_proc: CasProcess, tmp_path: Path) -> None:
    """examples/sdk/volume_service.py: a self-attesting asyncio service mounts its released
    volume (AsyncCas.mount_volumes), is stopped twice by SIGTERM (its loop's handler), and each
    stop seals and reports; the second run sees the first's line. The example twice, on one CAS."""
    for i in (1, 2):
        out = run_example("volume_service.py", cas_proc.data_dir / "client.env", tmp_path / f"work{i}")
        assert re.search(r"^owner applied notes-[0-9a-f]{8}: .* \(active\)$", out, re.M), out
        assert 'service run 1: exit 0: {"lines": 2, ' in out and 'service run 2: exit 0: {"lines": 3, ' in out
        assert "volume tags the CAS recorded: 3, " in out and "FAILED" not in out
        assert out.rstrip().endswith("OK")
