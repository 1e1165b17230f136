# shellcheck shell=bash
# train_all: one `confide run` of the training (the array TRAIN) per hospital, a b c, sourced by
# run.sh. With TRAIN_PARALLEL=1 (root: each `confide run` mounts in a private mount namespace)
# the three run at the same time, and every one is waited for before a failure is returned (the
# first failed one's exit status): under `set -e` a `wait` of the first failed training ended
# the script, which then stopped the CAS while the others still ran. Without, one after another.
train_all() {
  local pids=() site pid status rc=0
  for site in a b c; do
    if [ "${TRAIN_PARALLEL:-0}" = 1 ]; then
      confide run --config-id "hospital-$site/train" --tee sim -- "${TRAIN[@]}" &
      pids+=($!)
    else
      confide run --config-id "hospital-$site/train" --tee sim -- "${TRAIN[@]}"
    fi
  done
  for pid in "${pids[@]}"; do
    status=0
    wait "$pid" || status=$?
    if [ "$status" != 0 ] && [ "$rc" = 0 ]; then rc=$status; fi
  done
  return "$rc"
}
