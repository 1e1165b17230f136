"""The model owner's aggregation step (runs in the model owner's TEE under ``confide run``).

Reads the current global model from the volume ``model`` and one update per hospital from
the volumes ``update_a``, ``update_b``, ... (each imported from that hospital's policy, which
exports it to this service only), checks that every update was trained on exactly this
model, and writes the federated average (FedAvg: each hospital weighted by its number of
records) as the next round's model. Prints the round, the sites and the new weights' hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def main() -> int:
    expected = int(os.environ["EXPECTED_SITES"])
    model_dir = Path(os.environ["CONFIDE_VOLUME_MODEL"])
    model_bytes = (model_dir / "model.json").read_bytes()
    model = json.loads(model_bytes)
    base = hashlib.sha256(model_bytes).hexdigest()
    volumes = sorted(k for k in os.environ if k.startswith("CONFIDE_VOLUME_UPDATE_"))
    if len(volumes) != expected:
        raise SystemExit(f"got {len(volumes)} update volumes, expected {expected}")
    updates = []
    for name in volumes:
        path = Path(os.environ[name]) / "update.json"
        if not path.exists():
            raise SystemExit(f"{name}: no update yet")
        update = json.loads(path.read_text())
        if update["round"] != model["round"] or update["base_model_sha256"] != base:
            raise SystemExit(
                f"{update['site']}: update of round {update['round']} is not based on the current model "
                f"(round {model['round']}); waiting for it to train again"
            )
        if len(update["weights"]) != len(model["weights"]) or update["samples"] <= 0:
            raise SystemExit(f"{update['site']}: malformed update")
        updates.append(update)
    sites = [u["site"] for u in updates]
    if len(set(sites)) != len(sites):
        raise SystemExit(f"two updates claim the same site: {sites}")
    total = sum(u["samples"] for u in updates)
    weights = [
        sum(u["samples"] * u["weights"][j] for u in updates) / total for j in range(len(model["weights"]))
    ]
    new = {
        "round": model["round"] + 1,
        "weights": weights,
        "history": [*model.get("history", []), {"round": model["round"], "sites": sites, "samples": total}],
    }
    tmp = model_dir / "model.json.tmp"
    tmp.write_text(json.dumps(new, indent=1) + "\n")
    os.replace(tmp, model_dir / "model.json")
    digest = hashlib.sha256(json.dumps(weights).encode()).hexdigest()[:16]
    print(
        f"aggregator: round {model['round']} -> {new['round']}: {len(updates)} sites,"
        f" {total} records, weights {digest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
