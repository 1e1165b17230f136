"""A hospital's local training step (runs in the hospital's TEE under ``confide run``).

Reads the hospital's records from its protected volume ``records`` and the current global
model from the model owner's volume ``model`` (both mounted by ``confide run``, paths in
``CONFIDE_VOLUME_RECORDS`` and ``CONFIDE_VOLUME_MODEL``), runs a few epochs of full-batch
gradient descent for logistic regression starting from the global weights, and writes the
resulting weights into the hospital's volume ``update``, which the hospital exports to the
aggregator only. Prints counts and the loss, never a record.

Standard library only: the measured program is this file and the interpreter.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def load_records(path: Path) -> list[tuple[list[float], int]]:
    lines = path.read_text().splitlines()
    rows = []
    for line in lines[1:]:  # header: feature names, then the outcome
        *features, outcome = line.split(",")
        rows.append(([float(v) for v in features], int(outcome)))
    if not rows:
        raise SystemExit(f"no records in {path}")
    return rows


def predict(weights: list[float], x: list[float]) -> float:
    # weights: one per feature, then the bias
    return sigmoid(sum(w * v for w, v in zip(weights[:-1], x, strict=True)) + weights[-1])


def loss(weights: list[float], rows: list[tuple[list[float], int]]) -> float:
    eps = 1e-12
    total = 0.0
    for x, y in rows:
        p = predict(weights, x)
        total -= y * math.log(p + eps) + (1 - y) * math.log(1 - p + eps)
    return total / len(rows)


def train(weights: list[float], rows: list[tuple[list[float], int]], epochs: int, rate: float) -> list[float]:
    w = list(weights)
    n = len(rows)
    for _ in range(epochs):
        grad = [0.0] * len(w)
        for x, y in rows:
            err = predict(w, x) - y
            for j, v in enumerate(x):
                grad[j] += err * v
            grad[-1] += err
        w = [wj - rate * gj / n for wj, gj in zip(w, grad, strict=True)]
    return w


def main() -> int:
    site = os.environ["SITE"]
    epochs = int(os.environ["LOCAL_EPOCHS"])
    rate = float(os.environ["LEARNING_RATE"])
    records = Path(os.environ["CONFIDE_VOLUME_RECORDS"]) / "records.csv"
    model_file = Path(os.environ["CONFIDE_VOLUME_MODEL"]) / "model.json"
    model_bytes = model_file.read_bytes()
    model = json.loads(model_bytes)
    rows = load_records(records)
    if len(rows[0][0]) + 1 != len(model["weights"]):
        raise SystemExit(
            f"{site}: the model has {len(model['weights'])} weights, the records {len(rows[0][0])} features"
        )
    weights = train(model["weights"], rows, epochs, rate)
    update = {
        "site": site,
        "round": model["round"],
        "base_model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "samples": len(rows),
        "weights": weights,
        "local_loss": loss(weights, rows),
    }
    out = Path(os.environ["CONFIDE_VOLUME_UPDATE"])
    tmp = out / "update.json.tmp"
    tmp.write_text(json.dumps(update, indent=1) + "\n")
    os.replace(tmp, out / "update.json")  # the aggregator never sees half an update
    print(
        f"{site}: round {model['round']}: trained on {len(rows)} records,"
        f" local loss {update['local_loss']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
