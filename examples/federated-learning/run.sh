#!/usr/bin/env bash
# Federated learning with confide: three hospitals train a shared logistic-regression model on
# their own data, in (simulated) TEEs; the model owner's aggregator averages their updates.
# No stakeholder trusts another, nor the operator of the CAS and of the machines.
#
#   make venv                                   # once, in the repository root
#   examples/federated-learning/run.sh [WORKDIR] # ROUNDS=3 by default
#
# Everything runs on this machine: a development CAS (`cas serve --dev`: SQLite, real TLS, the
# simulated TEE), and every stakeholder's commands, each with its own identity file. The
# README next to this script explains the trust model and each step.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${1:-$(mktemp -d /tmp/confide-fl.XXXXXX)}
ROUNDS=${ROUNDS:-3}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
STORE=$WORK/store          # the untrusted storage shared by everyone: encrypted volumes only
KEYS=$WORK/keys            # each stakeholder's own files (on its own premises in real life)
mkdir -p "$STORE" "$KEYS"

export PYTHONPATH=$ROOT/src
confide() { "$ROOT/.venv/bin/python" -m confide "$@"; }
# The services' interpreter (standard library only): the real binary, so that the measurement
# names the file that runs.
SERVICE_PY=${SERVICE_PY:-$(readlink -f "$ROOT/.venv/bin/python")}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# expect CODE CMD...: run CMD, which must fail with exit code CODE; show its last line
expect() {
  local want=$1 rc=0 out; shift
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" != "$want" ]; then printf 'expected exit %s, got %s:\n%s\n' "$want" "$rc" "$out" >&2; exit 1; fi
  printf '   refused (exit %s): %s\n' "$rc" "$(printf '%s\n' "$out" | tail -n 1 | cut -c1-160)"
}
# render TEMPLATE OUT NAME=VALUE...: substitute @NAME@; refuse leftovers
render() {
  local template=$1 out=$2; shift 2
  cp "$template" "$out"
  for kv in "$@"; do sed -i "s|@${kv%%=*}@|${kv#*=}|g" "$out"; done
  if grep -n '@[A-Z_]*@' "$out"; then echo "unfilled placeholder in $out" >&2; exit 1; fi
}

step "the CAS (operated by a party nobody trusts; --dev: SQLite, simulated TEE, real TLS)"
"$ROOT/.venv/bin/python" -m confide cas serve --data-dir "$WORK/cas" --listen 127.0.0.1:0 --dev \
  >/dev/null 2>"$WORK/cas.log" &
CAS_PID=$!
trap 'kill "$CAS_PID" 2>/dev/null || true; wait "$CAS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$WORK/cas/client.env" ] && break; sleep 0.1; done
# shellcheck disable=SC1091
source "$WORK/cas/client.env"
echo "CAS at $CONFIDE_CAS_URL; clients trust only $CONFIDE_CAS_CERT"

step "identities: three hospitals, the model owner, an auditor"
declare -A FP
for who in hospital-a hospital-b hospital-c model-owner auditor; do
  FP[$who]=$(confide identity create --out "$KEYS/$who.id" --name "$who")
  echo "$who: ${FP[$who]:0:16}…"
done
AUDITOR=${FP[auditor]}   # may read every policy of the workflow (read: [CREATOR, AUDITOR])

step "each hospital seals its records into a protected volume (on its own premises)"
declare -A RECORDS_KEY RECORDS_TAG UPDATE_KEY UPDATE_TAG
for site in a b c; do
  h=hospital-$site
  mkdir -p "$WORK/plain-$h" "$STORE/$h"
  cp "$HERE/data/$h.csv" "$WORK/plain-$h/records.csv"
  confide volume create "$STORE/$h/records" --key-out "$KEYS/$h-records.key" >/dev/null
  confide volume add "$STORE/$h/records" "$WORK/plain-$h" --key "$KEYS/$h-records.key" >/dev/null
  RECORDS_TAG[$site]=$(confide volume seal "$STORE/$h/records" --key "$KEYS/$h-records.key" | tail -n 1)
  RECORDS_KEY[$site]=$(cat "$KEYS/$h-records.key")
  rm -r "$WORK/plain-$h"   # only the encrypted copy leaves the hospital
  # an empty volume for the hospital's model updates
  UPDATE_TAG[$site]=$(confide volume create "$STORE/$h/update" --key-out "$KEYS/$h-update.key")
  UPDATE_KEY[$site]=$(cat "$KEYS/$h-update.key")
  echo "$h: records $(($(wc -l <"$HERE/data/$h.csv") - 1)) rows, volume tag ${RECORDS_TAG[$site]:0:16}…"
done

step "the model owner seals the initial model (round 0, all weights 0)"
mkdir -p "$WORK/plain-model" "$STORE/model-owner"
echo '{"round": 0, "weights": [0.0, 0.0, 0.0, 0.0], "history": []}' >"$WORK/plain-model/model.json"
confide volume create "$STORE/model-owner/model" --key-out "$KEYS/model.key" >/dev/null
confide volume add "$STORE/model-owner/model" "$WORK/plain-model" --key "$KEYS/model.key" >/dev/null
MODEL_TAG=$(confide volume seal "$STORE/model-owner/model" --key "$KEYS/model.key" | tail -n 1)
rm -r "$WORK/plain-model"

step "measurements of the two programs (what the policies pin)"
TRAIN=("$SERVICE_PY" -I -B "$HERE/services/train.py")
AGGREGATE=("$SERVICE_PY" -I -B "$HERE/services/aggregate.py")
TRAIN_M=$(confide sim measure -- "${TRAIN[@]}")
AGGREGATE_M=$(confide sim measure -- "${AGGREGATE[@]}")
echo "train.py:     $TRAIN_M"
echo "aggregate.py: $AGGREGATE_M"

step "policies, in the order their pins need"
COMMON=(STORE="$STORE" AUDITOR="$AUDITOR")
render "$HERE/policies/fl-aggregator.yaml" "$WORK/fl-aggregator.yaml" "${COMMON[@]}" AGGREGATE_MEASUREMENT="$AGGREGATE_M"
AGG_HASH=$(confide policy apply "$WORK/fl-aggregator.yaml" --identity "$KEYS/model-owner.id")
echo "model owner: fl-aggregator ${AGG_HASH:0:16}…"
declare -A HOSPITAL_HASH
for site in a b c; do
  render "$HERE/policies/hospital.yaml" "$WORK/hospital-$site.yaml" "${COMMON[@]}" SITE=$site EPOCHS=5 \
    TRAIN_MEASUREMENT="$TRAIN_M" RECORDS_KEY="${RECORDS_KEY[$site]}" RECORDS_TAG="${RECORDS_TAG[$site]}" \
    UPDATE_KEY="${UPDATE_KEY[$site]}" UPDATE_TAG="${UPDATE_TAG[$site]}" AGGREGATOR_HASH="$AGG_HASH"
  HOSPITAL_HASH[$site]=$(confide policy apply "$WORK/hospital-$site.yaml" --identity "$KEYS/hospital-$site.id")
  echo "hospital-$site: hospital-$site ${HOSPITAL_HASH[$site]:0:16}… (exports its updates to fl-aggregator@${AGG_HASH:0:12}…)"
done
render "$HERE/policies/fl-model.yaml" "$WORK/fl-model.yaml" "${COMMON[@]}" MODEL_KEY="$(cat "$KEYS/model.key")" \
  MODEL_TAG="$MODEL_TAG" AGGREGATOR_HASH="$AGG_HASH" HOSPITAL_A_HASH="${HOSPITAL_HASH[a]}" \
  HOSPITAL_B_HASH="${HOSPITAL_HASH[b]}" HOSPITAL_C_HASH="${HOSPITAL_HASH[c]}"
MODEL_HASH=$(confide policy apply "$WORK/fl-model.yaml" --identity "$KEYS/model-owner.id")
echo "model owner: fl-model ${MODEL_HASH:0:16}… (exports the model to the four policies above, pinned)"

# The three trainings of a round run at the same time: they share one copy of the model, which
# each mounts ephemeral (a shared lock; its changes stay in its own view). Each `confide run`
# mounts in a private mount namespace, which needs root; without it each run mounts in a
# directory of its own under /run/confide/volumes only where its user may create one (else the
# three would meet at /run/confide/volumes/model and all but one be refused), so they run one
# after another. A failed training
# stops the script once all three have ended (train_all.sh).
# shellcheck source=examples/federated-learning/train_all.sh
source "$HERE/train_all.sh"
if [ "$(id -u)" = 0 ]; then TRAIN_PARALLEL=1; else TRAIN_PARALLEL=0; fi
for round in $(seq "$ROUNDS"); do
  step "round $round: the hospitals train in their TEEs (at the same time), then the aggregator averages"
  train_all
  # The aggregator seals the model, so it needs it alone: it waits (up to 10 minutes) for a
  # mount of the model still live (a late training, a look with `confide volume mount
  # --ephemeral`) instead of failing, and new ephemeral mounts then wait behind it
  # (docs/volume-mount.md "Sharing a volume"). It still starts after the trainings: it needs
  # this round's updates, and started with them it could take the model first.
  confide run --config-id fl-aggregator/aggregate --tee sim --volume-wait 600 -- "${AGGREGATE[@]}"
done

step "the model owner reads the trained model (its key, the CAS's current tag)"
CURRENT_TAG=$(confide policy events fl-model --identity "$KEYS/model-owner.id" | \
  "$ROOT/.venv/bin/python" -c 'import json,sys; print([e for e in map(json.loads, sys.stdin) if e["type"] == "volume-tag"][-1]["payload"]["tag"])')
confide volume open "$STORE/model-owner/model" --key "$KEYS/model.key" --tag "$CURRENT_TAG" --to "$WORK/model-out" >/dev/null
cat "$WORK/model-out/model.json"

step "refused: a modified training program (it would copy the records out)"
cp "$HERE/services/train.py" "$WORK/train-modified.py"
echo 'open("/tmp/stolen.csv", "w").write(open(os.environ["CONFIDE_VOLUME_RECORDS"] + "/records.csv").read())' >>"$WORK/train-modified.py"
expect 31 confide run --config-id hospital-a/train --tee sim -- "$SERVICE_PY" -I -B "$WORK/train-modified.py"

step "refused: hospital A reads hospital B's policy, events, accesses"
expect 33 confide policy show hospital-b --identity "$KEYS/hospital-a.id"
expect 33 confide policy events hospital-b --identity "$KEYS/hospital-a.id"
expect 33 confide ledger accesses hospital-b --identity "$KEYS/hospital-a.id"

step "refused: hospital A's own policy imports hospital B's records"
cat >"$WORK/probe.yaml" <<EOF
name: hospital-a-probe
version: "0.3"
services:
  - name: peek
    image_name: peek
    attestation:
      sim:
        measurement: "$TRAIN_M"
volumes:
  - name: records
    import:
      session: hospital-b
      volume: records
images:
  - name: peek
    volumes:
      - name: records
        path: "$STORE/hospital-b/records"
access_policy:
  read: [CREATOR]
  update: [CREATOR]
security:
  attestation:
    tolerate: [simulation]
EOF
confide policy apply "$WORK/probe.yaml" --identity "$KEYS/hospital-a.id" >/dev/null
expect 33 confide run --config-id hospital-a-probe/peek --tee sim -- "${TRAIN[@]}"

step "refused: hospital A's policy points its own volume at hospital B's encrypted files"
sed "s|^name: hospital-a|name: hospital-a-probe2|; s|/hospital-a/records|/hospital-b/records|" "$WORK/hospital-a.yaml" |
  "$ROOT/.venv/bin/python" -c 'import re, sys; t = sys.stdin.read()
t = t.replace("  - name: model\n    import:\n      session: fl-model\n      volume: model\n", "")
print(re.sub(r"      - name: model\n        path: .*\n", "", t), end="")' >"$WORK/probe2.yaml"
confide policy apply "$WORK/probe2.yaml" --identity "$KEYS/hospital-a.id" >/dev/null
expect 21 confide run --config-id hospital-a-probe2/train --tee sim -- "${TRAIN[@]}"

step "refused: policy updates by non-owners"
sed "s|^version: \"0.3\"|version: \"0.3\"\npredecessor: ${HOSPITAL_HASH[a]}|; s|measurement: \"$TRAIN_M\"|measurement: \"$(confide sim measure -- "$SERVICE_PY" -I -B "$WORK/train-modified.py")\"|" \
  "$WORK/hospital-a.yaml" >"$WORK/hospital-a-hijack.yaml"
expect 33 confide policy apply "$WORK/hospital-a-hijack.yaml" --identity "$KEYS/hospital-b.id"
expect 33 confide policy apply "$WORK/hospital-a-hijack.yaml" --identity "$KEYS/model-owner.id"

step "a pinned export stops when the policy it names changes: hospital C changes its training"
sed "s|^version: \"0.3\"|version: \"0.3\"\npredecessor: ${HOSPITAL_HASH[c]}|; s|LOCAL_EPOCHS: \"5\"|LOCAL_EPOCHS: \"8\"|" \
  "$WORK/hospital-c.yaml" >"$WORK/hospital-c-v2.yaml"
C2_HASH=$(confide policy apply "$WORK/hospital-c-v2.yaml" --identity "$KEYS/hospital-c.id")
echo "hospital-c: hospital-c ${C2_HASH:0:16}… (8 local epochs)"
expect 33 confide run --config-id hospital-c/train --tee sim -- "${TRAIN[@]}"
echo "   the model owner reviews the change and re-pins fl-model to it:"
sed "s|^version: \"0.3\"|version: \"0.3\"\npredecessor: $MODEL_HASH|; s|${HOSPITAL_HASH[c]}|$C2_HASH|" \
  "$WORK/fl-model.yaml" >"$WORK/fl-model-v2.yaml"
MODEL_HASH=$(confide policy apply "$WORK/fl-model-v2.yaml" --identity "$KEYS/model-owner.id")
confide run --config-id hospital-c/train --tee sim -- "${TRAIN[@]}"

step "refused: the model owner swaps the aggregator; the hospitals' pins stop it reading their updates"
cp "$HERE/services/aggregate.py" "$WORK/aggregate-v2.py"
echo '# v2: would also keep a copy of every update' >>"$WORK/aggregate-v2.py"
AGG2_M=$(confide sim measure -- "$SERVICE_PY" -I -B "$WORK/aggregate-v2.py")
sed "s|^version: \"0.3\"|version: \"0.3\"\npredecessor: $AGG_HASH|; s|$AGGREGATE_M|$AGG2_M|" \
  "$WORK/fl-aggregator.yaml" >"$WORK/fl-aggregator-v2.yaml"
AGG2_HASH=$(confide policy apply "$WORK/fl-aggregator-v2.yaml" --identity "$KEYS/model-owner.id")
# the model owner re-pins its own export of the model to the new aggregator...
sed "s|^predecessor: .*|predecessor: $MODEL_HASH|; s|$AGG_HASH|$AGG2_HASH|" "$WORK/fl-model-v2.yaml" >"$WORK/fl-model-v3.yaml"
MODEL_HASH=$(confide policy apply "$WORK/fl-model-v3.yaml" --identity "$KEYS/model-owner.id")
# ...but the hospitals export their updates to the aggregator version they reviewed only
expect 33 confide run --config-id fl-aggregator/aggregate --tee sim -- "$SERVICE_PY" -I -B "$WORK/aggregate-v2.py"

step "the auditor: releases in the ledger (names and hashes, never keys), and the log verified"
for p in hospital-a hospital-b hospital-c fl-aggregator fl-model; do
  confide ledger accesses "$p" --identity "$KEYS/auditor.id" | tail -n 2
done
for _ in $(seq 100); do
  confide ledger verify --url "$CONFIDE_LOG_URL" --key "$CONFIDE_LOG_KEY" --state "$WORK/auditor.state" \
    >"$WORK/verify.out" 2>&1 && break
  sleep 0.2
done
cat "$WORK/verify.out"
echo
echo "done; everything is in $WORK"
