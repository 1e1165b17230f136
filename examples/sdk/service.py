"""The lab's analytics service: a Python program that attests itself with the confide SDK.

Not started by ``confide run``: it asks the CAS for its configuration directly, with evidence
from the simulated TEE measuring the command that started it (``python3 service.py``, the
measurement the lab's policy pins). It prints what it received as JSON, hashes and lengths
only, never a secret value.

Usage (with the CAS's client.env sourced, or its variables set)::

    python3 service.py POLICY/SERVICE
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from confide.errors import ConfideError
from confide.sdk import Cas


def main() -> int:
    config_id = sys.argv[1] if len(sys.argv) > 1 else "analytics/job"
    # The simulator measures this very command line: the interpreter, this file, its arguments.
    command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    try:
        with Cas.from_env() as cas:
            release = cas.attest(config_id, cas.simulated_provider(command))
    except ConfideError as exc:
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    key = release.environment.get("DATA_KEY", "")
    summary = {
        "policy": release.policy,
        "service": release.service,
        "data_key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        "data_key_hex_chars": len(key),
        "db_pass_chars": len(release.environment.get("DB_PASS", "")),
        "files": {path: len(content) for path, content in release.files.items()},
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
