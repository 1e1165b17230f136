"""QuoteProvider implementations against fake device trees.

- configfs-tsm: a FUSE file system served by a child process that behaves like the kernel's
  configfs-tsm (Documentation/ABI/testing/configfs-tsm): ``mkdir`` creates a report entry with
  its attributes, writing ``inblob`` or an option bumps ``generation``, reading ``outblob``
  produces a report that carries ``inblob`` at the platform's report-data offset, ``rmdir``
  drops the entry. Knobs simulate a concurrent writer and a misbehaving TSM.
- Gramine: a FUSE file system with ``attestation_type``, ``user_report_data`` (64-byte writes
  only) and ``quote``, which is produced at read time over the current report data.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confide.errors import BindingError, NetworkError, ParseError, StorageError, UsageError
from confide.runtime.quote import (
    ConfigfsTsmQuoteProvider,
    GramineQuoteProvider,
)
from confide.verify.result import Platform
from quote_fakes import (
    SNP_REPORT_DATA,
    SNP_REPORT_SIZE,
    SNP_VMPL,
    FakeGramine,
    FakeTsm,
    TsmBehaviour,
    mounted,
)

REPORT_DATA = hashlib.sha512(b"ephemeral key || nonce").digest()
TDX_REPORT_DATA = 48 + 520
SGX_REPORT_DATA = 48 + 320


@pytest.fixture
def fake_tsm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    behaviour: TsmBehaviour = getattr(request, "param", TsmBehaviour())
    with mounted(tmp_path / "tsm" / "report", FakeTsm(behaviour)) as root:
        yield root


def _param(**kwargs: Any) -> Any:
    return pytest.param(
        TsmBehaviour(**kwargs), id=",".join(f"{k}={v}" for k, v in kwargs.items()) or "default"
    )


def test_fake_tree_behaves_like_configfs(fake_tsm: Path) -> None:
    entry = fake_tsm / "probe"
    entry.mkdir()
    assert sorted(os.listdir(entry)) == sorted(
        ["inblob", "outblob", "provider", "generation", "auxblob", "privlevel", "privlevel_floor"]
    )
    assert (entry / "generation").read_text() == "0\n"
    (entry / "inblob").write_bytes(b"x" * 64)
    assert (entry / "generation").read_text() == "1\n"
    entry.rmdir()
    assert os.listdir(fake_tsm) == []


def test_configfs_sev_snp_report_with_auxblob(fake_tsm: Path) -> None:
    evidence = ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)
    assert evidence.platform is Platform.SEV_SNP
    assert evidence.provider == "configfs-tsm/sev_guest"
    assert len(evidence.raw) == SNP_REPORT_SIZE
    assert evidence.raw[SNP_REPORT_DATA : SNP_REPORT_DATA + 64] == REPORT_DATA
    assert dict(evidence.aux) == {"auxblob": b"certificate table"}
    assert os.listdir(fake_tsm) == []  # the report entry was removed


def test_configfs_privlevel_is_written_and_counted(fake_tsm: Path) -> None:
    evidence = ConfigfsTsmQuoteProvider(fake_tsm, privlevel=2).get_evidence(REPORT_DATA)
    assert int.from_bytes(evidence.raw[SNP_VMPL : SNP_VMPL + 4], "little") == 2
    assert os.listdir(fake_tsm) == []


@pytest.mark.parametrize("fake_tsm", [_param(privlevel_floor=2)], indirect=True)
def test_configfs_privlevel_below_the_floor_is_refused(fake_tsm: Path) -> None:
    with pytest.raises(UsageError, match="at least 2"):
        ConfigfsTsmQuoteProvider(fake_tsm, privlevel=1).get_evidence(REPORT_DATA)
    assert os.listdir(fake_tsm) == []


def test_configfs_privlevel_out_of_range_is_refused() -> None:
    with pytest.raises(UsageError, match=r"0\.\.3"):
        ConfigfsTsmQuoteProvider(Path("/nonexistent"), privlevel=4)


@pytest.mark.parametrize(
    "fake_tsm", [_param(provider="tdx_guest"), _param(provider="tdx_guest", quote_version=5)], indirect=True
)
def test_configfs_tdx_quote(fake_tsm: Path) -> None:
    evidence = ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)
    assert evidence.platform is Platform.TDX
    assert evidence.provider == "configfs-tsm/tdx_guest"
    assert REPORT_DATA in evidence.raw
    assert dict(evidence.aux) == {}


@pytest.mark.parametrize("fake_tsm", [_param(provider="tdx_guest")], indirect=True)
def test_configfs_privlevel_on_tdx_is_refused(fake_tsm: Path) -> None:
    with pytest.raises(UsageError, match="no privlevel"):
        ConfigfsTsmQuoteProvider(fake_tsm, privlevel=0).get_evidence(REPORT_DATA)


@pytest.mark.parametrize("fake_tsm", [_param(interfere="option"), _param(interfere="inblob")], indirect=True)
def test_configfs_concurrent_writer_is_detected_by_generation(fake_tsm: Path) -> None:
    with pytest.raises(BindingError, match=r"generation went from 0 to 2, expected 1"):
        ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)
    assert os.listdir(fake_tsm) == []


@pytest.mark.parametrize("fake_tsm", [_param(misplace_report_data=True)], indirect=True)
def test_configfs_report_without_our_report_data_is_refused(fake_tsm: Path) -> None:
    with pytest.raises(BindingError, match="expected " + REPORT_DATA.hex()):
        ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)


@pytest.mark.parametrize("fake_tsm", [_param(outblob_error=errno.EIO)], indirect=True)
def test_configfs_device_io_error_is_a_storage_error(fake_tsm: Path) -> None:
    with pytest.raises(StorageError, match="outblob"):
        ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)
    assert os.listdir(fake_tsm) == []


@pytest.mark.parametrize("fake_tsm", [_param(provider="arm_cca_guest")], indirect=True)
def test_configfs_unknown_provider_is_refused(fake_tsm: Path) -> None:
    with pytest.raises(UsageError, match="arm_cca_guest"):
        ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)


def test_configfs_concurrent_requests_each_get_their_own_entry(fake_tsm: Path) -> None:
    provider = ConfigfsTsmQuoteProvider(fake_tsm)
    results: dict[int, bytes] = {}

    def request(i: int) -> None:
        rd = hashlib.sha512(b"%d" % i).digest()
        results[i] = provider.get_evidence(rd).raw[SNP_REPORT_DATA : SNP_REPORT_DATA + 64]

    threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: hashlib.sha512(b"%d" % i).digest() for i in range(6)}
    assert os.listdir(fake_tsm) == []


def test_configfs_missing_device_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a TDX or SEV-SNP guest"):
        ConfigfsTsmQuoteProvider(tmp_path / "no" / "tsm").get_evidence(REPORT_DATA)


def test_configfs_plain_directory_is_not_mistaken_for_configfs(tmp_path: Path) -> None:
    # mkdir works but the kernel's attributes do not appear (provider, the first one read): no
    # report may be produced.
    with pytest.raises(UsageError, match="provider' does not exist"):
        ConfigfsTsmQuoteProvider(tmp_path).get_evidence(REPORT_DATA)
    assert list(tmp_path.iterdir()) == []


def test_configfs_report_data_must_be_64_bytes(fake_tsm: Path) -> None:
    with pytest.raises(UsageError, match="expected 64"):
        ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA[:32])
    assert os.listdir(fake_tsm) == []


@pytest.fixture
def gramine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    kwargs: dict[str, Any] = getattr(request, "param", {})
    with mounted(tmp_path / "attestation", FakeGramine(**kwargs)) as root:
        yield root


def test_gramine_dcap_quote(gramine: Path) -> None:
    provider = GramineQuoteProvider(gramine)
    for i in range(3):
        rd = hashlib.sha512(b"%d" % i).digest()
        evidence = provider.get_evidence(rd)
        assert evidence.platform is Platform.SGX
        assert evidence.provider == "gramine/dcap"
        assert evidence.raw[SGX_REPORT_DATA : SGX_REPORT_DATA + 64] == rd
    assert (gramine / "user_report_data").read_bytes() == rd


@pytest.mark.parametrize("gramine", [{"misplace": True}], indirect=True)
def test_gramine_quote_without_our_report_data_is_refused(gramine: Path) -> None:
    with pytest.raises(BindingError):
        GramineQuoteProvider(gramine).get_evidence(REPORT_DATA)


@pytest.mark.parametrize(("kind", "message"), [("none", "remote_attestation"), ("epid", "expected 'dcap'")])
def test_gramine_without_dcap_is_refused(tmp_path: Path, kind: str, message: str) -> None:
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "attestation_type").write_text(kind)
    with pytest.raises(UsageError, match=message):
        GramineQuoteProvider(root).get_evidence(REPORT_DATA)


def test_gramine_missing_device_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not running inside Gramine"):
        GramineQuoteProvider(tmp_path / "attestation").get_evidence(REPORT_DATA)


def test_gramine_short_quote_is_a_parse_error(tmp_path: Path) -> None:
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "attestation_type").write_text("dcap")
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(b"\x03\x00" + bytes(100))  # a truncated quote
    with pytest.raises(ParseError, match="at least 432"):
        GramineQuoteProvider(root).get_evidence(REPORT_DATA)


def test_gramine_requests_of_several_providers_in_one_process_are_serialised(gramine: Path) -> None:
    # /dev/attestation holds one user_report_data per process, whichever provider object wrote it
    errors: list[BaseException] = []

    def request(i: int) -> None:
        provider = GramineQuoteProvider(gramine)
        try:
            for j in range(15):
                rd = hashlib.sha512(b"%d/%d" % (i, j)).digest()
                assert provider.get_evidence(rd).raw[SGX_REPORT_DATA : SGX_REPORT_DATA + 64] == rd
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize(
    "fake_tsm",
    [_param(oversize="outblob"), _param(oversize="auxblob"), _param(oversize="generation"),
     _param(oversize="provider")],
    indirect=True,
)  # fmt: skip
def test_configfs_attribute_longer_than_the_kernel_returns_is_refused_unread(fake_tsm: Path) -> None:
    # configfs never returns more than TSM_OUTBLOB_MAX (32 KiB) of outblob/auxblob, nor more than a
    # page of a text attribute: a tree that does is not the kernel's, and is read no further
    with pytest.raises(ParseError, match=r"got more than (32768|4096) bytes"):
        ConfigfsTsmQuoteProvider(fake_tsm).get_evidence(REPORT_DATA)
    assert os.listdir(fake_tsm) == []  # the report entry was removed


def _plain_gramine(root: Path, quote: bytes, attestation_type: bytes = b"dcap\n") -> Path:
    root.mkdir()
    (root / "attestation_type").write_bytes(attestation_type)
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(quote)
    return root


def test_gramine_quote_larger_than_the_verifier_takes_is_refused_unread(tmp_path: Path) -> None:
    from confide.evidence.dcap import MAX_QUOTE_SIZE

    quote = bytearray(MAX_QUOTE_SIZE + 1)  # carries our report data: only its size is wrong
    quote[SGX_REPORT_DATA : SGX_REPORT_DATA + 64] = REPORT_DATA
    root = _plain_gramine(tmp_path / "attestation", bytes(quote))
    with pytest.raises(ParseError, match=f"got more than {MAX_QUOTE_SIZE} bytes"):
        GramineQuoteProvider(root).get_evidence(REPORT_DATA)
    quote = quote[:MAX_QUOTE_SIZE]  # at the limit: taken
    (root / "quote").write_bytes(bytes(quote))
    assert len(GramineQuoteProvider(root).get_evidence(REPORT_DATA).raw) == MAX_QUOTE_SIZE


def test_gramine_attestation_type_longer_than_a_page_is_refused(tmp_path: Path) -> None:
    root = _plain_gramine(tmp_path / "attestation", b"", attestation_type=b"dcap" + b" " * 5000)
    with pytest.raises(ParseError, match="got more than 4096 bytes"):
        GramineQuoteProvider(root).get_evidence(REPORT_DATA)


# --- the platform asked for (confide run --tee tdx | sev-snp) -------------------------------------

_MISMATCHES = [
    # A kernel of one platform, the other asked for; outblob fails if it is read at all, so the
    # refusal is shown to come from the provider attribute, before any report is requested.
    pytest.param(TsmBehaviour(provider="sev_guest", outblob_error=errno.EIO), Platform.TDX, id="snp-as-tdx"),
    pytest.param(
        TsmBehaviour(provider="tdx_guest", outblob_error=errno.EIO), Platform.SEV_SNP, id="tdx-as-snp"
    ),
]


@pytest.mark.parametrize(("fake_tsm", "expect"), _MISMATCHES, indirect=["fake_tsm"])
def test_configfs_provider_of_the_other_platform_is_refused(fake_tsm: Path, expect: Platform) -> None:
    provider = ConfigfsTsmQuoteProvider(fake_tsm, expect=expect)
    other = "tdx_guest" if expect is Platform.SEV_SNP else "sev_guest"
    message = rf"--tee {expect}, but the kernel's attestation provider is '{other}'"
    with pytest.raises(UsageError, match=message):
        provider.check()
    with pytest.raises(UsageError, match=message):
        provider.get_evidence(REPORT_DATA)
    assert os.listdir(fake_tsm) == []  # both report entries were removed


@pytest.mark.parametrize(
    ("fake_tsm", "expect"),
    [
        pytest.param(TsmBehaviour(provider="sev_guest"), Platform.SEV_SNP, id="snp"),
        pytest.param(TsmBehaviour(provider="tdx_guest"), Platform.TDX, id="tdx"),
    ],
    indirect=["fake_tsm"],
)
def test_configfs_provider_of_the_platform_asked_for_is_used(fake_tsm: Path, expect: Platform) -> None:
    provider = ConfigfsTsmQuoteProvider(fake_tsm, expect=expect)
    assert provider.check() is expect
    evidence = provider.get_evidence(REPORT_DATA)
    assert evidence.platform is expect
    assert REPORT_DATA in evidence.raw
    assert os.listdir(fake_tsm) == []


@pytest.mark.parametrize(
    "fake_tsm", [_param(provider="arm_cca_guest", outblob_error=errno.EIO)], indirect=True
)
@pytest.mark.parametrize("expect", [Platform.TDX, Platform.SEV_SNP, None])
def test_configfs_unknown_provider_is_refused_by_check(fake_tsm: Path, expect: Platform | None) -> None:
    provider = ConfigfsTsmQuoteProvider(fake_tsm, expect=expect)
    message = r"got provider 'arm_cca_guest', expected one of sev_guest, tdx_guest"
    with pytest.raises(UsageError, match=message):
        provider.check()
    with pytest.raises(UsageError, match=message):
        provider.get_evidence(REPORT_DATA)
    assert os.listdir(fake_tsm) == []


def test_configfs_expects_tdx_or_sev_snp_only() -> None:
    with pytest.raises(UsageError, match="expected tdx or sev-snp"):
        ConfigfsTsmQuoteProvider(Path("/nonexistent"), expect=Platform.SGX)


def test_configfs_check_without_the_device_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a TDX or SEV-SNP guest"):
        ConfigfsTsmQuoteProvider(tmp_path / "no" / "tsm", expect=Platform.TDX).check()


class _RecordingCas:
    """The CAS as ``confide run`` sees it; ``attest`` records the request and stops the run."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.request: dict[str, Any] | None = None

    def nonce(self) -> str:
        self.calls.append("nonce")
        return "00" * 32

    def attest(self, request: dict[str, Any]) -> Any:
        self.calls.append("attest")
        self.request = request
        raise NetworkError("the test stops here")

    def close(self) -> None:
        pass


def _run_cli(monkeypatch: pytest.MonkeyPatch, root: Path, tee: str) -> tuple[Any, list[str], _RecordingCas]:
    from click.testing import CliRunner

    from confide.cas import cli
    from confide.cas.client import CasClient
    from confide.runtime import quote

    calls: list[str] = []
    cas = _RecordingCas(calls)

    def from_env(cls: type) -> _RecordingCas:
        calls.append("from_env")
        return cas

    monkeypatch.setattr(CasClient, "from_env", classmethod(from_env))
    monkeypatch.setattr(
        quote, "ConfigfsTsmQuoteProvider", functools.partial(quote.ConfigfsTsmQuoteProvider, root)
    )
    result = CliRunner().invoke(cli.run, ["--config-id", "p/s", "--tee", tee, "--", "/bin/true"])
    return result, calls, cas


@pytest.mark.parametrize(("fake_tsm", "expect"), _MISMATCHES, indirect=["fake_tsm"])
def test_cli_run_refuses_the_other_platform_before_the_cas(
    fake_tsm: Path, expect: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, calls, _ = _run_cli(monkeypatch, fake_tsm, str(expect))
    assert isinstance(result.exception, UsageError), result.output
    assert UsageError.exit_code == 2
    assert f"--tee {expect}, but the kernel's attestation provider is" in str(result.exception)
    assert calls == []  # the CAS was not even looked up, let alone asked for a nonce
    assert os.listdir(fake_tsm) == []


@pytest.mark.parametrize("fake_tsm", [_param(provider="arm_cca_guest")], indirect=True)
def test_cli_run_refuses_an_unknown_provider_before_the_cas(
    fake_tsm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, calls, _ = _run_cli(monkeypatch, fake_tsm, "tdx")
    assert isinstance(result.exception, UsageError), result.output
    assert "got provider 'arm_cca_guest'" in str(result.exception)
    assert calls == []


@pytest.mark.parametrize(
    ("fake_tsm", "expect"),
    [
        pytest.param(TsmBehaviour(provider="sev_guest"), Platform.SEV_SNP, id="snp"),
        pytest.param(TsmBehaviour(provider="tdx_guest"), Platform.TDX, id="tdx"),
    ],
    indirect=["fake_tsm"],
)
def test_cli_run_sends_evidence_of_the_platform_asked_for(
    fake_tsm: Path, expect: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, calls, cas = _run_cli(monkeypatch, fake_tsm, str(expect))
    # the recording CAS stopped it: confide run's one-line refusal and the error's exit code
    assert result.exit_code == NetworkError.exit_code, result.output
    assert result.output == "error: NetworkError: the test stops here\n"
    assert calls == ["from_env", "nonce", "attest"]
    assert cas.request is not None and cas.request["platform"] == str(expect)
    assert os.listdir(fake_tsm) == []
