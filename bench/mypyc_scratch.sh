#!/bin/bash
# A scratch copy of this checkout with the CAS's hot modules compiled by mypyc (the experiment of
# docs/performance.md "mypyc (2026-12-06)"; not a supported build: see there for why it was not
# integrated). Copies src, bench, tests and pyproject.toml to DEST, applies the two work-arounds
# the compiler needed (below), compiles the modules and leaves the extension modules next to their
# sources in DEST/src, where they take precedence over the .py files. Then, for example:
#
#   bench/mypyc_scratch.sh /tmp/compiled
#   (cd /tmp/compiled && flock -s /tmp/confide-cpu.lock .venv/bin/python bench/attest_instructions.py -n 100 --warmup 30)
#   flock -s /tmp/confide-cpu.lock env PYTHONPATH=/tmp/compiled/src .venv/bin/python \
#       bench/serve_instructions.py --server cas --flows 200 --warmup 40 --root /tmp/compiled
#
# Not compiled: confide.cas.app (FastAPI reads its endpoints' signatures and annotations, which
# compiled nested functions do not have; an async generator; `del` of an argument),
# confide.httpserve.limits (subclasses uvicorn's classes: an internal mypyc error),
# confide.policy.attestation, model and _types (pydantic reads its validators' signatures).
set -euo pipefail
src_root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:?usage: bench/mypyc_scratch.sh DEST}
mkdir -p "$dest"
cp -r "$src_root/src" "$src_root/bench" "$src_root/tests" "$src_root/pyproject.toml" "$dest/"
[ -d "$src_root/examples" ] && cp -r "$src_root/examples" "$dest/"
[ -f "$src_root/README.md" ] && cp "$src_root/README.md" "$dest/"
ln -sfn "$src_root/.venv" "$dest/.venv"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
cd "$dest/src"
# 1. An attribute named `_thread` becomes the C struct field `__thread`, a GCC keyword: the C
#    does not compile (the same error: github.com/eth-brownie/brownie/pull/1911).
sed -i 's/self\._thread\b/self._commit_thread/g' confide/cas/db.py confide/ledger/store.py
# 2. typeshed declares JSONEncoder.indent `int | str`; mypyc checks the read and raises TypeError
#    on the None it holds at run time.
"$dest/.venv/bin/python" - <<'EOF'
from pathlib import Path
p = Path("confide/jsonencode.py")
old = "    if make is None or base.indent is not None:"
new = '    indent: Any = getattr(base, "indent", None)\n    if make is None or indent is not None:'
text = p.read_text()
assert old in text, "confide/jsonencode.py changed: re-check the work-around"
p.write_text(text.replace(old, new))
EOF
"$dest/.venv/bin/mypyc" --config-file ../pyproject.toml \
  confide/cas/core.py confide/cas/verifier.py confide/cas/release_crypto.py confide/cas/db.py \
  confide/cas/ledger_sink.py confide/policy/appraise.py confide/verify/sim.py confide/verify/result.py \
  confide/evidence/sim.py confide/jsonstrict.py confide/jsonencode.py confide/jcs.py \
  confide/hmacsha256.py confide/lru.py confide/ledger/encoding.py confide/ledger/store.py \
  confide/ledger/db.py confide/ledger/merkle.py
