"""Collateral URLs in messages never carry credentials (confide.collateral.public_url)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from confide.collateral import public_url
from confide.collateral.dcap import PcsHttpSource
from confide.errors import NetworkError
from confide.evidence.dcap import TeeType


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.trustedservices.intel.com", "https://api.trustedservices.intel.com"),
        ("https://user:s3cret@pccs.example:8081/sgx/certification/v4/tcb?fmspc=00906ED50000",
         "https://pccs.example:8081/sgx/certification/v4/tcb?fmspc=00906ED50000"),
        ("http://token@[::1]:9/x#frag", "http://[::1]:9/x"),
        ("https://host:notaport/", "<unparsable URL>"),
        ("alice:hunter2@pccs.example", "<not an absolute URL>"),
        ("notaurl", "<not an absolute URL>"),
    ],
)  # fmt: skip
def test_public_url_drops_the_userinfo(url: str, shown: str) -> None:
    assert public_url(url) == shown


def test_a_failing_pcs_does_not_show_the_credentials_of_its_url(tmp_path: Path) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    def status(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503)

    for handler in (refuse, status):
        source = PcsHttpSource(
            "https://alice:hunter2@pccs.example",
            cache_dir=tmp_path,
            client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        )
        with pytest.raises(NetworkError) as info:
            source.get_collateral(fmspc=bytes.fromhex("00906ED50000"), ca="platform", tee=TeeType.SGX)
        assert "hunter2" not in str(info.value) and "alice" not in str(info.value)
        assert "https://pccs.example/sgx/certification/v4/tcb?fmspc=00906ed50000" in str(info.value)
