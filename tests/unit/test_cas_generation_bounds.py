"""What one policy version may make the CAS generate: it generates a version's secrets in the
write transaction that applies it, and anyone may create a policy under a free name, so a 64 KB
policy of ~1000 RSA-3072 keys held the CAS's writer for ~10 minutes (0.57 s a key here), and
one of 64 KiB binary secrets stored ~1000 times its size. Bounded at load time (new versions; a
version stored before still loads), and through the CAS's apply."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas
from confide import errors
from confide.policy import loads_policy
from confide.policy.model import MAX_GENERATED_BYTES, MAX_GENERATED_RSA_KEYS, MAX_SECRETS


def text(secrets: list[dict[str, Any]]) -> str:
    return json.dumps({"name": "gen", "version": "0.3", "secrets": secrets})


def rsa(n: int, key_type: str = "RSA-3072") -> list[dict[str, Any]]:
    return [{"name": f"k{i}", "kind": "private-key", "key_type": key_type} for i in range(n)]


def problem(secrets: list[dict[str, Any]]) -> str:
    with pytest.raises(errors.PolicyError) as info:
        loads_policy(text(secrets))
    return info.value.message


def test_generated_rsa_keys_are_bounded() -> None:
    assert len(loads_policy(text(rsa(MAX_GENERATED_RSA_KEYS))).secrets) == MAX_GENERATED_RSA_KEYS
    message = problem(rsa(MAX_GENERATED_RSA_KEYS + 1, "RSA-2048"))
    assert f"secrets[{MAX_GENERATED_RSA_KEYS}].key_type" in message
    assert f"expected at most {MAX_GENERATED_RSA_KEYS} RSA keys" in message
    # keys given as values are not generated; other key types are cheap
    many = [{"name": f"e{i}", "kind": "private-key", "key_type": "P-384"} for i in range(200)]
    assert len(loads_policy(text(rsa(MAX_GENERATED_RSA_KEYS) + many)).secrets) == MAX_GENERATED_RSA_KEYS + 200
    # a version the CAS stored before still loads (the CAS generated its keys then)
    assert len(loads_policy(text(rsa(40)), stored=True).secrets) == 40


def test_secrets_and_generated_bytes_are_bounded() -> None:
    ascii_ = [{"name": f"a{i}", "kind": "ascii"} for i in range(MAX_SECRETS + 1)]
    assert f"got {MAX_SECRETS + 1} secrets, expected at most {MAX_SECRETS}" in problem(ascii_)
    assert len(loads_policy(text(ascii_[:MAX_SECRETS])).secrets) == MAX_SECRETS
    n = MAX_GENERATED_BYTES // 65536
    binary = [{"name": f"b{i}", "kind": "binary", "size": 65536} for i in range(n)]
    assert len(loads_policy(text(binary)).secrets) == n
    binary.append({"name": "one-more", "kind": "binary"})  # 20 bytes by default
    message = problem(binary)
    assert f"secrets[{n}].size" not in message and f"secrets[{n}]" in message
    assert f"expected at most {MAX_GENERATED_BYTES} bytes" in message


def test_the_cas_refuses_a_policy_of_too_many_rsa_keys_before_generating_any(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path, "")
    started = time.monotonic()
    with pytest.raises(errors.PolicyError, match="RSA keys"):
        ipc.apply(text(rsa(MAX_GENERATED_RSA_KEYS + 100)))
    assert time.monotonic() - started < 5  # 116 RSA-3072 keys took ~60 s here
