"""A served CAS's log lines on stderr (docs/cas.md "Request log"): the request lines, whole and in
order, and the last lines before a signal stops it, which the batching handler holds until the
end of the loop iteration while uvicorn re-raises the signal at once."""

from __future__ import annotations

import json
import signal
import ssl
import urllib.request
from pathlib import Path

import pytest

from cas_harness import CasProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_request_lines_and_the_last_lines_before_a_signal(tmp_path: Path, sig: int) -> None:
    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
        for _ in range(3):
            request = urllib.request.Request(cas.env["CONFIDE_CAS_URL"] + "/v1/attest/nonce", method="POST")
            with urllib.request.urlopen(request, context=ctx, timeout=10) as r:
                assert r.status == 200
    finally:
        cas.stop(sig)
    assert cas.log is not None and cas.proc is not None
    # (after a SIGINT the CLI also prints "aborted", not JSON)
    lines = [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    nonces = [line for line in requests if line["route"] == "/v1/attest/nonce"]
    assert [(line["method"], line["status"]) for line in nonces] == [("POST", 200)] * 3
    assert lines[-1]["message"] == f"Finished server process [{cas.proc.pid}]"
