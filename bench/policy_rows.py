"""Benchmark: what reading a policy version from the database costs now that its document is
sealed at rest (confide.cas.policy_rows, docs/cas.md "Policies at rest"): the parse and
validation every read of a version already paid (``loads_policy`` and ``policy_hash``, as
``Cas._load`` does on a cache miss) next to the same with the document opened first
(``open_column``), interleaved in one run (``_interleave``). ``Cas._load`` caches the parsed
version by (name, hash), and phase 1 of an attestation reads its snapshot in memory, so an
attestation pays this only when its policy version is not cached.

    .venv/bin/python bench/policy_rows.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _interleave import interleaved  # noqa: E402

from confide.cas.policy_rows import open_column, seal_column  # noqa: E402
from confide.cas.secrets import Sealer  # noqa: E402
from confide.policy import canonical_json, loads_policy, policy_hash  # noqa: E402

POLICY = """name: bench
version: "0.3"
services:
  - name: svc
    command: svc --token $$SCONE::token$$ --pw $$SCONE::pw$$
    attestation:
      sim:
        measurement: "{m}"
secrets:
  - name: token
    kind: ascii
  - name: pw
    kind: ascii
    value: an explicit password
  - name: key
    kind: private-key
volumes:
  - name: data
    fspf_key: {k}
    fspf_tag: "{t}"
security:
  attestation:
    tolerate: [simulation]
""".format(m="ab" * 48, k="5e" * 32, t="0c" * 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    sealer = Sealer(os.urandom(32))
    policy = loads_policy(POLICY)
    digest = policy_hash(policy)
    document = canonical_json(policy).decode()
    stored = seal_column(sealer, "document", "bench", digest, document)

    def parse(text: str) -> None:
        assert policy_hash(loads_policy(text, source="stored policy bench")) == digest

    t_clear, t_sealed = interleaved(
        lambda: parse(document),
        lambda: parse(open_column(sealer, "document", "bench", digest, stored)),
        args.seconds,
    )
    t_open, _ = interleaved(
        lambda: open_column(sealer, "document", "bench", digest, stored), lambda: None, min(args.seconds, 3.0)
    )
    print(f"document: {len(document)} bytes, stored sealed: {len(stored)} bytes")
    print(f"read a clear version (parse, hash):  {t_clear * 1e6:.1f} us")
    print(f"read a sealed version (open, parse): {t_sealed * 1e6:.1f} us")
    print(f"open alone:                          {t_open * 1e6:.1f} us")
    print(f"ratio sealed/clear: {t_sealed / t_clear:.3f}")


if __name__ == "__main__":
    main()
