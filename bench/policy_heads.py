"""Benchmark: what reading a policy's current version costs now that heads and version states
are MAC'd (confide.cas.policy_auth, docs/cas.md "What a policy's current version rests on").

An in-process CAS (``prepare``, SQLite in a temporary directory, as ``cas serve --dev``) with
one policy; in one read transaction, interleaved (``_interleave``):

* ``before``: the read the attestation path made before (``SELECT hash, revision FROM
  policy_heads WHERE name = ?``), the peer;
* ``verified, cached``: :meth:`PolicyAuth.head` as the CAS calls it (the head joined with its
  version's row; a row seen before is a cache hit: no MAC computed);
* ``verified, uncached``: the same with no cache (two HMAC-SHA256 and the JSON of their
  messages each time: a row changed since, or the first read after a start).

An attestation reads the head once in phase 1 (unless from its snapshot) and once per write
transaction in phase 2's check.

    .venv/bin/python bench/policy_heads.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _interleave import interleaved  # noqa: E402
from _sim_request import POLICY  # noqa: E402

from confide.cas.client import policy_submission  # noqa: E402
from confide.cas.db import raw_execute  # noqa: E402
from confide.cas.policy_auth import PolicyAuth  # noqa: E402
from confide.cas.server import prepare  # noqa: E402
from confide.identity import Identity  # noqa: E402
from confide.policy.loader import loads_policy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cas, *_ = prepare(Path(tmp) / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
        policy = loads_policy(POLICY)
        cas.apply(policy_submission(policy, Identity.generate(), cas=cas.tls_spki_sha256))
        name = policy.name
        uncached = PolicyAuth(cas.sealer, cache=0)
        try:
            with cas.db.read() as conn:

                def before() -> object:
                    row = raw_execute(
                        conn, "SELECT hash, revision FROM policy_heads WHERE name = ?", (name,)
                    ).fetchone()
                    return (str(row[0]), int(row[1]))

                def cached() -> object:
                    return cas.policy_auth.head(conn, name)

                def fresh() -> object:
                    return uncached.head(conn, name)

                assert cached() is not None and fresh() is not None
                t_before, t_cached = interleaved(before, cached, args.seconds)
                t_before2, t_fresh = interleaved(before, fresh, args.seconds)
        finally:
            cas.db.dispose()
    print(f"before (unauthenticated read):  {t_before * 1e6:.2f} us")
    print(f"verified, cached:               {t_cached * 1e6:.2f} us  ({t_cached / t_before:.2f}x)")
    print(f"before (second round):          {t_before2 * 1e6:.2f} us")
    print(f"verified, uncached:             {t_fresh * 1e6:.2f} us  ({t_fresh / t_before2:.2f}x)")


if __name__ == "__main__":
    main()
