"""How the three CSV files here were made (synthetic, no real patient): standardised features
drawn per hospital around a different mean, outcomes drawn from a logistic model with fixed
true weights. Re-running it rewrites the same files (fixed seed)."""

import math
import random
from pathlib import Path

rng = random.Random(20261206)  # noqa: S311 (synthetic records, not a secret)
true_w = [1.5, -2.0, 0.75]
true_b = -0.25
here = Path(__file__).parent
for site, n, shift in (("a", 40, 0.0), ("b", 60, 0.5), ("c", 80, -0.5)):
    rows = []
    for _ in range(n):
        x = [round(rng.gauss(shift, 1.0), 4) for _ in true_w]
        z = sum(w * v for w, v in zip(true_w, x, strict=True)) + true_b
        y = 1 if rng.random() < 1 / (1 + math.exp(-z)) else 0
        rows.append([*x, y])
    lines = ["age_z,bp_z,marker_z,outcome", *(",".join(str(v) for v in r) for r in rows)]
    (here / f"hospital-{site}.csv").write_text("\n".join(lines) + "\n")
