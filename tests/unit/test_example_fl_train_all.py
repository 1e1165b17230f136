"""``examples/federated-learning``'s ``train_all`` (train_all.sh, sourced by run.sh) under
``set -e``, with ``confide run`` faked: a training that fails while the others still run ends
the script only once every training has ended, with the failed one's exit status. (It used to
``wait`` for each in turn: the first failure ended the script, whose EXIT trap stopped the CAS,
while the other trainings went on without it.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

TRAIN_ALL = Path(__file__).parents[2] / "examples" / "federated-learning" / "train_all.sh"

SCRIPT = """
set -euo pipefail
source "$1"
DONE=$2
TRAIN=(train.py)
confide() {  # confide run --config-id hospital-X/train --tee sim -- train.py
  case $3 in
    hospital-a/train) sleep 0.1; exit 7 ;;
    *) sleep 1; echo "$3" >>"$DONE" ;;
  esac
}
trap 'echo "stopped the CAS after: $(tr "\\n" " " <"$DONE")"' EXIT
: >"$DONE"
TRAIN_PARALLEL=$3
train_all
echo "not reached"
"""


@pytest.mark.parametrize("parallel", ["1", "0"])
def test_a_failed_training_stops_the_script_after_all_ended(tmp_path: Path, parallel: str) -> None:
    done = tmp_path / "done"
    r = subprocess.run(
        ["bash", "-c", SCRIPT, "bash", str(TRAIN_ALL), str(done), parallel],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 7, r.stderr
    if parallel == "1":  # b and c ran alongside a: both ended before the script did
        # in the order they ended, which is the scheduler's
        assert sorted(r.stdout.split("after: ")[1].split()) == ["hospital-b/train", "hospital-c/train"]
    else:  # one after another: a's failure stops the script before b starts
        assert r.stdout == "stopped the CAS after: \n"
    assert "not reached" not in r.stdout
