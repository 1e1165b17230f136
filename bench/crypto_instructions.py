"""Instructions per call of each step of the attestation's crypto path, on both sides, counted by
callgrind (not a timing: repeatable on a shared VM).

The client's steps (``_sim_request.sim_attest_request``: a fresh P-256 key, its SPKI, the binding,
the simulated evidence signed by a new platform key: ECDSA P-256, version 2, and with a checkout
that has it also by an Ed25519 key, version 1; ``decrypt_release``), the CAS's (``verify_sim``
of both versions, loading the runtime's key, ``Cas._encrypt``), the primitives inside them, and
alternatives the code does not use (X25519 for the release,
``EllipticCurvePublicKey.from_encoded_point`` for the runtime's key), each called ``-n`` times
after a warm-up between a ``CALLGRIND_ZERO_STATS`` and a ``CALLGRIND_DUMP_STATS_AT``. ``--root
DIR`` takes ``confide`` and the bench helpers from another checkout, for before/after
comparisons (a step the checkout lacks is skipped).

    .venv/bin/python bench/crypto_instructions.py [-n 200] [--root DIR] [STEP ...]
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _steps(root: Path) -> dict[str, Callable[[], object]]:
    sys.path[:0] = [str(root / "bench"), str(root / "src")]
    serialization: Any = importlib.import_module("cryptography.hazmat.primitives.serialization")
    hashes: Any = importlib.import_module("cryptography.hazmat.primitives.hashes")
    ec: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    x25519: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.x25519")
    sim_request: Any = importlib.import_module("_sim_request")
    core: Any = importlib.import_module("confide.cas.core")
    verify: Any = importlib.import_module("confide.verify.sim")
    ed25519: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ed25519")
    sim_platform: Any = importlib.import_module("confide.sim.platform").SimPlatform  # type: ignore[attr-defined]
    platform = sim_platform.generate()  # a new platform key (P-256 since evidence version 2)
    # An Ed25519 platform (version 1) where the checkout can make one on request.
    v1 = (
        sim_platform.generate(ed25519=True)
        if "ed25519" in inspect.signature(sim_platform.generate).parameters
        else None
    )
    nonce_hex = os.urandom(32).hex()
    nonce = bytes.fromhex(nonce_hex)
    key, request = sim_request.sim_attest_request(
        platform, nonce_hex, policy="bench", service="app", measurement=sim_request.MEASUREMENT
    )
    der, evidence = base64.b64decode(request["public_key"]), base64.b64decode(request["evidence"])
    public = key.public_key()
    config = {"command": ["app", "--token", "x" * 20], "environment": {"KEY": "ab" * 32}}
    cas = object.__new__(core.Cas)
    release = core.Cas._encrypt(cas, config, public, nonce, der)
    cas_public = serialization.load_der_public_key(base64.b64decode(release["cas_key"]))
    at = datetime.now(UTC)
    trusted = platform.public_key
    signed = evidence[:-64]
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_signature = p256.sign(signed, ec.ECDSA(hashes.SHA256()))
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_signature, ed_public = ed_key.sign(signed), ed_key.public_key()
    x_private, x_peer = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate().public_key()
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with_der = "public_key_der" in inspect.signature(core.decrypt_release).parameters
    steps: dict[str, Callable[[], object]] = {
        "client: sim_attest_request": lambda: sim_request.sim_attest_request(
            platform, nonce_hex, policy="bench", service="app", measurement=sim_request.MEASUREMENT
        ),
        "client: decrypt_release": lambda: core.decrypt_release(key, release, nonce),
        "CAS: verify_sim": lambda: verify.verify_sim(evidence, trusted, at=at),
        "CAS: load runtime key (load_der_public_key)": lambda: serialization.load_der_public_key(der),
        "CAS: Cas._encrypt": lambda: core.Cas._encrypt(cas, config, public, nonce, der),
        "P-256 key generation": lambda: ec.generate_private_key(ec.SECP256R1()),
        "P-256 SPKI encoding": lambda: public.public_bytes(*spki),
        "P-256 ECDH": lambda: key.exchange(ec.ECDH(), cas_public),
        "Ed25519 sign (evidence v1)": lambda: ed_key.sign(signed),
        "Ed25519 verify (evidence v1)": lambda: ed_public.verify(ed_signature, signed),
        "alt: from_encoded_point (runtime key)": lambda: ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), der[26:]
        ),
        "ECDSA P-256 sign, DER (evidence v2)": lambda: p256.sign(signed, ec.ECDSA(hashes.SHA256())),
        "ECDSA P-256 verify, DER (evidence v2)": lambda: p256.public_key().verify(
            p256_signature, signed, ec.ECDSA(hashes.SHA256())
        ),
        "alt: P-256 key generation + SPKI": lambda: (
            ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(*spki)
        ),
        "alt: X25519 key generation + raw key": lambda: (
            x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        ),
        "alt: X25519 exchange": lambda: x_private.exchange(x_peer),
    }
    if v1 is not None:
        _, v1_request = sim_request.sim_attest_request(
            v1, nonce_hex, policy="bench", service="app", measurement=sim_request.MEASUREMENT
        )
        v1_evidence, v1_trusted = base64.b64decode(v1_request["evidence"]), v1.public_key
        steps["client: sim_attest_request (v1, Ed25519)"] = lambda: sim_request.sim_attest_request(
            v1, nonce_hex, policy="bench", service="app", measurement=sim_request.MEASUREMENT
        )
        steps["CAS: verify_sim (v1, Ed25519)"] = lambda: verify.verify_sim(v1_evidence, v1_trusted, at=at)
    # The CAS's per-request MAC and ledger entry (2026-12-06, perf6), and the release's HKDF with
    # the alternative that was measured and not kept (RFC 5869 on hashlib's SHA-256 states)
    encoding: Any = importlib.import_module("confide.ledger.encoding")
    hkdf: Any = importlib.import_module("cryptography.hazmat.primitives.kdf.hkdf")
    cas.nonce_key = os.urandom(32)
    body, salt, info = os.urandom(24), os.urandom(16), core.RELEASE_INFO + der + der
    shared = key.exchange(ec.ECDH(), cas_public)
    payload = {
        "advisories": [], "debug": False, "evidence_sha256": "7c" * 32, "measurement": "ab" * 48,
        "platform": "sim", "policy_hash": "de" * 32, "service": "app", "simulated": True,
        "tcb_status": None, "tolerated": ["simulation"], "verdict": "accepted",
    }  # fmt: skip
    time = encoding.format_time(at)
    steps["CAS: nonce MAC (Cas._nonce_mac)"] = lambda: core.Cas._nonce_mac(cas, body)
    steps["CAS: ledger entry (encode_entry, an attestation's payload)"] = lambda: encoding.encode_entry(
        encoding.EntryType.ATTESTATION, time, "bench", payload, salt
    )
    steps["HKDF-SHA256 (cryptography, the release key)"] = lambda: hkdf.HKDF(
        hashes.SHA256(), 32, nonce, info
    ).derive(shared)
    if importlib.util.find_spec("confide.hmacsha256") is not None:
        mac: Any = importlib.import_module("confide.hmacsha256").HmacSha256

        def hkdf_on_hashlib() -> bytes:  # RFC 5869 §2.2-2.3, one block of output
            return bytes(mac(mac(nonce).digest(shared)).digest(info + b"\x01"))

        assert hkdf_on_hashlib() == hkdf.HKDF(hashes.SHA256(), 32, nonce, info).derive(shared)
        steps["alt: HKDF-SHA256 on HmacSha256 (hashlib)"] = hkdf_on_hashlib
    # The attestation's answer and the release's plaintext (2026-12-06, perf7): json's encoder
    # against the answer written around base64's output (core.release_json, app._JsonBody).
    starlette: Any = importlib.import_module("starlette.responses")
    json_encoder: Any = importlib.import_module("confide.jsonencode").encoder
    answer_json = json_encoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
    eph_der, iv, ciphertext = base64.b64decode(release["cas_key"]), os.urandom(12), os.urandom(259)
    session_config = {**config, "pwd": None, "files": {}, "volumes": [], "session": "ab" * 32}

    def answer_by_encoder() -> Any:  # the dict result() returns, json, starlette's Response
        out = {"cas_key": base64.b64encode(eph_der).decode(), "iv": base64.b64encode(iv).decode(),
               "ciphertext": base64.b64encode(ciphertext).decode()}  # fmt: skip
        return starlette.Response(answer_json(out).encode("utf-8"), media_type="application/json")

    steps["JSON: the answer by the encoder and Response"] = answer_by_encoder
    steps["JSON: the release plaintext (_RELEASE_JSON)"] = lambda: core._RELEASE_JSON(session_config).encode()
    steps["JSON: {'a': 'b'} by the encoder"] = lambda: answer_json({"a": "b"})
    if hasattr(core, "release_json"):
        app: Any = importlib.import_module("confide.cas.app")
        steps["CAS: the answer (release_json, _JsonBody)"] = lambda: app._JsonBody(
            core.release_json(eph_der, iv, ciphertext)
        )
        body = core.release_json(eph_der, iv, ciphertext)
        assert body == answer_by_encoder().body
        steps["starlette Response(body, media_type)"] = lambda: starlette.Response(
            body, media_type="application/json"
        )
        steps["CAS: _JsonBody(body)"] = lambda: app._JsonBody(body)
    if with_der:
        steps["client: decrypt_release (public_key_der)"] = lambda: core.decrypt_release(
            key, release, nonce, public_key_der=der
        )
    return steps


def _load_callgrind() -> Any:
    spec = importlib.util.spec_from_file_location("_callgrind", BENCH / "_callgrind.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Callgrind()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200, help="calls per step")
    parser.add_argument("--root", type=Path, default=BENCH.parent, help="checkout whose code to count")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("steps", nargs="*", help="steps to count (default: all)")
    args = parser.parse_args()
    root = args.root.resolve()
    if args.child:
        callgrind = _load_callgrind()
        steps = _steps(root)
        for name in args.steps or list(steps):
            if name not in steps:
                continue
            step = steps[name]
            for _ in range(20):
                step()
            callgrind.zero()
            for _ in range(args.n):
                step()
            callgrind.dump(name)
        return
    work = Path(tempfile.mkdtemp(prefix="confide-cg-crypto-"))
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.out", "-q", sys.executable,
         str(Path(__file__).resolve()), "--child", "-n", str(args.n), "--root", str(root), *args.steps],
        env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])
        raise SystemExit(run.returncode)
    counts: list[tuple[int, str, int]] = []
    for path in work.glob("cg.out.*"):
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.M)
        total = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
        if trigger and total:
            counts.append((int(path.name.rsplit(".", 1)[1]), trigger.group(1), int(total.group(1))))
    print(f"instructions per call ({args.n} calls each; {root}):")
    for _, name, total in sorted(counts):
        print(f"  {name:<45} {total / args.n:12,.0f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
