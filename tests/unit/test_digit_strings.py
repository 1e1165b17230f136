"""Numbers given as digit strings (command-line options, policy indices, HTTP lengths) are
judged by their digits' count before ``int()``: thousands of digits (``int()``'s limit is 4300)
and non-ASCII digits such as ``²`` (``str.isdigit()`` takes them, ``int()`` refuses them) are
clear refusals, never a ``ValueError`` traceback."""

from __future__ import annotations

import pytest

from cli import run_confide
from confide import errors
from confide.cas.server import _parse_listen
from confide.policy.loader import loads_policy


@pytest.mark.parametrize("port", ["²", "8" * 5000, "65536", "080800"])
def test_a_listen_port_that_is_no_port_is_a_usage_error(port: str) -> None:
    with pytest.raises(errors.UsageError, match="expected HOST:PORT"):
        _parse_listen(f"127.0.0.1:{port}")


@pytest.mark.parametrize("index", ["9" * 1000, "²"])  # YAML keys end at 1024 characters
def test_a_policy_pcr_index_of_many_digits_is_a_policy_error(index: str) -> None:
    text = (
        "name: p\nversion: '0.3'\nservices:\n  - name: s\n    attestation:\n"
        f"      az-tdx-vtpm:\n        pcrs: {{'{index}': '" + "00" * 32 + "'}\n"
    )
    with pytest.raises(errors.PolicyError, match=r"expected an index 0\.\.31"):
        loads_policy(text)


@pytest.mark.parametrize("gpus", ["9" * 5000, "²"])
def test_a_gpu_count_of_many_digits_is_a_usage_error(gpus: str) -> None:
    proc = run_confide(
        "run", "--config-id", "app/ai", "--gpus", gpus, "--tee", "tdx", "--", "/bin/true",
        drop=("CONFIDE_CAS_URL", "CONFIDE_CAS_CERT"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--gpus: got" in proc.stderr and "Traceback" not in proc.stderr
