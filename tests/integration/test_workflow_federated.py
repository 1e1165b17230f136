"""The federated-learning workflow of ``examples/federated-learning`` end to end, through the CLI:
a real CAS (``cas serve --dev``, TLS), five identities, protected volumes, the example's
policies and service programs under ``confide run --tee sim``; the trained model checked
against an independent computation of the federated average, then the refusals and the
auditor's view (docs/workflows.md)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess, running_cas
from confide import errors

EXAMPLE = ROOT / "examples" / "federated-learning"
SITES = ("a", "b", "c")
ROUNDS = 2
EPOCHS, RATE = 5, 0.5  # the values in policies/hospital.yaml as run.sh renders it


def confide(cas: CasProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **cas.env}
    r = subprocess.run([sys.executable, "-m", "confide", *args], capture_output=True, text=True, env=env,
                       timeout=120, check=False)  # fmt: skip
    if check:
        assert r.returncode == 0, f"confide {' '.join(args[:3])}: {r.stdout}{r.stderr}"
    return r


def render(template: str, **values: str) -> str:
    text = (EXAMPLE / "policies" / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    assert not leftover, f"{template}: unfilled {leftover}"
    return text


def with_predecessor(text: str, digest: str) -> str:
    text = re.sub(r"^predecessor: .*\n", "", text, flags=re.M)
    return text.replace('version: "0.3"\n', f'version: "0.3"\npredecessor: {digest}\n', 1)


@dataclass
class Workflow:
    cas: CasProcess
    work: Path
    python: str  # the services' interpreter (the real binary, as measured)
    keys: dict[str, str] = field(default_factory=dict)  # volume -> key hex (owners' files)
    hashes: dict[str, str] = field(default_factory=dict)  # policy -> current hash
    texts: dict[str, str] = field(default_factory=dict)  # policy -> YAML applied
    measurements: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # the services' stdout, in order

    @property
    def store(self) -> Path:
        return self.work / "store"

    def ident(self, who: str) -> str:
        return str(self.work / f"{who}.id")

    def apply(
        self, name: str, text: str, who: str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        path = self.work / f"{name}-{len(self.texts)}-{abs(hash(text))}.yaml"
        path.write_text(text)
        r = confide(self.cas, "policy", "apply", str(path), "--identity", self.ident(who), check=check)
        if r.returncode == 0:
            self.hashes[name], self.texts[name] = r.stdout.strip(), text
        return r

    def service(self, program: str) -> list[str]:
        return [self.python, "-I", "-B", program]

    def run(self, config_id: str, program: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = confide(self.cas, "run", "--config-id", config_id, "--tee", "sim", "--", *self.service(program),
                    check=check)  # fmt: skip
        if r.returncode == 0:
            self.outputs.append(r.stdout)
        return r

    def events(self, policy: str, who: str) -> list[dict[str, object]]:
        out = confide(self.cas, "policy", "events", policy, "--identity", self.ident(who)).stdout
        return [json.loads(line) for line in out.splitlines()]

    def open_volume(self, owner_policy: str, volume: str, directory: Path, tag: str) -> Path:
        """What the volume's owner reads with its key at ``tag``."""
        keyfile = self.work / f"{owner_policy}-{volume}.key"
        out = self.work / f"open-{owner_policy}-{volume}-{time.monotonic_ns()}"
        confide(self.cas, "volume", "open", str(directory), "--key", str(keyfile), "--tag", tag,
                "--to", str(out))  # fmt: skip
        return out


def sealed_volume(wf: Workflow, owner: str, volume: str, files: dict[str, bytes]) -> str:
    """Create the owner's volume in the store with the CLI (on the owner's premises); its tag."""
    directory = wf.store / owner / volume
    directory.parent.mkdir(parents=True, exist_ok=True)
    keyfile = wf.work / f"{owner}-{volume}.key"
    tag = confide(wf.cas, "volume", "create", str(directory), "--key-out", str(keyfile)).stdout.strip()
    if files:
        plain = wf.work / f"plain-{owner}-{volume}"
        plain.mkdir()
        for name, data in files.items():
            (plain / name).write_bytes(data)
        confide(wf.cas, "volume", "add", str(directory), str(plain), "--key", str(keyfile))
        tag = confide(wf.cas, "volume", "seal", str(directory), "--key", str(keyfile)).stdout.split()[-1]
        shutil.rmtree(plain)  # only the encrypted copy leaves the premises
    wf.keys[f"{owner}/{volume}"] = keyfile.read_text().strip()
    return tag


@pytest.fixture(scope="module")
def wf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workflow]:
    work = tmp_path_factory.mktemp("federated")
    with running_cas(work / "cas", None) as cas:
        flow = Workflow(cas, work, str(Path(sys.executable).resolve()))
        setup(flow)
        train = str(EXAMPLE / "services" / "train.py")
        for _ in range(ROUNDS):
            # as run.sh: the trainings at the same time (they share the model's copy, mounted
            # ephemeral), each in a private mount namespace (root); else one after another
            with ThreadPoolExecutor(len(SITES) if os.geteuid() == 0 else 1) as pool:
                list(pool.map(lambda site: flow.run(f"hospital-{site}/train", train), SITES))
            flow.run("fl-aggregator/aggregate", str(EXAMPLE / "services" / "aggregate.py"))
        yield flow


def setup(wf: Workflow) -> None:
    """Identities, volumes, measurements and the five policies, in the order their pins need."""
    with ThreadPoolExecutor(4) as pool:
        fps = dict(zip(
            ("hospital-a", "hospital-b", "hospital-c", "model-owner", "auditor"),
            pool.map(lambda who: confide(wf.cas, "identity", "create", "--out", wf.ident(who), "--name",
                                         who).stdout.strip(),
                     ("hospital-a", "hospital-b", "hospital-c", "model-owner", "auditor")),
        ))  # fmt: skip
        initial = json.dumps({"round": 0, "weights": [0.0] * 4, "history": []}).encode()
        jobs = {
            **{f"hospital-{s}/records": ("records", {"records.csv": (EXAMPLE / "data" / f"hospital-{s}.csv").read_bytes()}) for s in SITES},
            **{f"hospital-{s}/update": ("update", {}) for s in SITES},
            "fl-model/model": ("model", {"model.json": initial}),
        }  # fmt: skip
        futures = {k: pool.submit(sealed_volume, wf, k.split("/")[0], v[0], v[1]) for k, v in jobs.items()}
        tags = {k: f.result() for k, f in futures.items()}
        train, aggregate = (str(EXAMPLE / "services" / p) for p in ("train.py", "aggregate.py"))
        m_train, m_agg = pool.map(
            lambda p: confide(wf.cas, "sim", "measure", "--", *wf.service(p)).stdout.strip(),
            (train, aggregate),
        )
    wf.measurements.update(train=m_train, aggregate=m_agg)
    # the example's templates name fl-model's directory model-owner/model
    (wf.store / "model-owner").mkdir()
    (wf.store / "fl-model" / "model").rename(wf.store / "model-owner" / "model")
    common = {"STORE": str(wf.store), "AUDITOR": fps["auditor"]}
    wf.apply(
        "fl-aggregator", render("fl-aggregator.yaml", **common, AGGREGATE_MEASUREMENT=m_agg), "model-owner"
    )
    for s in SITES:
        h = f"hospital-{s}"
        text = render("hospital.yaml", **common, SITE=s, EPOCHS=str(EPOCHS), TRAIN_MEASUREMENT=m_train,
                      RECORDS_KEY=wf.keys[f"{h}/records"], RECORDS_TAG=tags[f"{h}/records"],
                      UPDATE_KEY=wf.keys[f"{h}/update"], UPDATE_TAG=tags[f"{h}/update"],
                      AGGREGATOR_HASH=wf.hashes["fl-aggregator"])  # fmt: skip
        wf.apply(h, text, h)
    text = render("fl-model.yaml", **common, MODEL_KEY=wf.keys["fl-model/model"], MODEL_TAG=tags["fl-model/model"],
                  AGGREGATOR_HASH=wf.hashes["fl-aggregator"],
                  **{f"HOSPITAL_{s.upper()}_HASH": wf.hashes[f"hospital-{s}"] for s in SITES})  # fmt: skip
    wf.apply("fl-model", text, "model-owner")


# -- an independent computation of what the workflow must produce ---------------------------------


def read_csv(site: str) -> tuple[list[list[float]], list[float]]:
    lines = (EXAMPLE / "data" / f"hospital-{site}.csv").read_text().split()[1:]
    rows = [[float(v) for v in line.split(",")] for line in lines]
    return [[*r[:-1], 1.0] for r in rows], [r[-1] for r in rows]  # a constant feature for the bias


def local_sgd(w: list[float], xs: list[list[float]], ys: list[float]) -> list[float]:
    for _ in range(EPOCHS):
        preds = [1 / (1 + math.exp(-sum(a * b for a, b in zip(w, x)))) for x in xs]
        grad = [sum((p - y) * x[j] for p, y, x in zip(preds, ys, xs)) / len(xs) for j in range(len(w))]
        w = [a - RATE * g for a, g in zip(w, grad)]
    return w


def expected_model(rounds: int) -> list[float]:
    data = {s: read_csv(s) for s in SITES}
    w = [0.0] * 4
    for _ in range(rounds):
        local = {s: local_sgd(w, *data[s]) for s in SITES}
        total = sum(len(data[s][1]) for s in SITES)
        w = [sum(len(data[s][1]) * local[s][j] for s in SITES) / total for j in range(4)]
    return w


# -- the tests ---------------------------------------------------------------------------------


def test_the_aggregated_model_is_the_federated_average(wf: Workflow) -> None:
    # the model owner reads the model at the CAS's current tag, and the versions of the hospitals'
    # updates released to the aggregator's last run (its ledger entry names their tags)
    tags = [e["payload"] for e in wf.events("fl-model", "model-owner") if e["type"] == "volume-tag"]
    current = str(tags[-1]["tag"])  # type: ignore[index]
    out = confide(
        wf.cas, "ledger", "accesses", "fl-aggregator", "--identity", wf.ident("model-owner"), "--json"
    )
    released = {v["name"]: v for v in json.loads(out.stdout)[-1]["volumes"]}
    assert released["model"]["tag"] != current  # the aggregator's run moved the model's tag
    model_dir = wf.open_volume("fl-model", "model", wf.store / "model-owner" / "model", current)
    model = json.loads((model_dir / "model.json").read_text())
    assert model["round"] == ROUNDS
    assert [h["sites"] for h in model["history"]] == [[f"hospital-{s}" for s in SITES]] * ROUNDS
    assert [h["samples"] for h in model["history"]] == [180] * ROUNDS
    # an independent implementation of local training + FedAvg on the plaintext data
    for got, want in zip(model["weights"], expected_model(ROUNDS), strict=True):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (model["weights"], want)
    assert max(abs(w) for w in model["weights"]) > 0.1  # it learned something
    # exactly the sample-weighted mean of the last updates each hospital's service wrote
    updates = []
    for s in SITES:
        h = f"hospital-{s}"
        opened = wf.open_volume(h, "update", wf.store / h / "update", released[f"update-{s}"]["tag"])
        updates.append(json.loads((opened / "update.json").read_text()))
    assert [(u["site"], u["round"], u["samples"]) for u in updates] == [
        ("hospital-a", ROUNDS - 1, 40), ("hospital-b", ROUNDS - 1, 60), ("hospital-c", ROUNDS - 1, 80)
    ]  # fmt: skip
    total = sum(u["samples"] for u in updates)
    assert model["weights"] == [
        sum(u["samples"] * u["weights"][j] for u in updates) / total for j in range(4)
    ]
    # the services printed counts and losses, and the storage holds no record in clear
    assert sum("trained on" in out for out in wf.outputs) == ROUNDS * len(SITES)
    record = (EXAMPLE / "data" / "hospital-a.csv").read_text().splitlines()[1].encode()
    for f in wf.store.rglob("*"):
        assert not f.is_file() or record not in f.read_bytes(), f


def test_a_modified_training_program_is_refused(wf: Workflow) -> None:
    modified = wf.work / "train-modified.py"
    modified.write_text(
        (EXAMPLE / "services" / "train.py").read_text() + "\nprint(open('/etc/hostname').read())\n"
    )
    r = wf.run("hospital-a/train", str(modified), check=False)
    assert r.returncode == errors.AppraisalError.exit_code, r.stderr
    assert "measurement" in r.stderr


def test_a_hospital_cannot_read_another_hospitals_data(wf: Workflow) -> None:
    for cmd in (("policy", "show"), ("policy", "events"), ("ledger", "accesses")):
        r = confide(wf.cas, *cmd, "hospital-b", "--identity", wf.ident("hospital-a"), check=False)
        assert r.returncode == errors.AccessDeniedError.exit_code, r.stdout + r.stderr
    # its own policy importing hospital B's records: the release is refused
    probe = (wf.texts["hospital-a"].replace("name: hospital-a\n", "name: hospital-a-probe\n")
             .replace("      session: fl-model\n      volume: model\n", "      session: hospital-b\n      volume: records\n"))  # fmt: skip
    assert wf.apply("hospital-a-probe", probe, "hospital-a").returncode == 0
    r = wf.run("hospital-a-probe/train", str(EXAMPLE / "services" / "train.py"), check=False)
    assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr
    assert "hospital-b does not export volume records" in r.stderr
    # nor by pointing its own volume at hospital B's encrypted files: they do not authenticate
    own_key = (wf.texts["hospital-a"].replace("/hospital-a/records", "/hospital-b/records")
               .replace("name: hospital-a\n", "name: hospital-a-probe2\n")
               .replace("  - name: model\n    import:\n      session: fl-model\n      volume: model\n", ""))  # fmt: skip
    own_key = re.sub(r"      - name: model\n        path: .*\n", "", own_key)
    assert wf.apply("hospital-a-probe2", own_key, "hospital-a").returncode == 0
    r = wf.run("hospital-a-probe2/train", str(EXAMPLE / "services" / "train.py"), check=False)
    assert r.returncode == errors.SignatureError.exit_code, r.stderr
    assert "does not authenticate under this key" in r.stderr


def test_policy_updates_by_non_owners_are_refused(wf: Workflow) -> None:
    hijack = with_predecessor(wf.texts["hospital-a"], wf.hashes["hospital-a"]).replace(
        wf.measurements["train"], "00" * 48
    )
    for who in ("hospital-b", "model-owner", "auditor"):
        r = wf.apply("hospital-a", hijack, who, check=False)
        assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr
        assert "may not create or update policy hospital-a" in r.stderr
    refused = [e for e in wf.events("hospital-a", "hospital-a") if e["type"] == "policy-update-refused"]
    assert len(refused) == 3


def test_the_ledger_shows_each_release_and_verifies(wf: Workflow) -> None:
    secrets = set(wf.keys.values())
    out = confide(
        wf.cas, "ledger", "accesses", "hospital-a", "--identity", wf.ident("auditor"), "--json"
    ).stdout
    listed = json.loads(out)
    rows = [r for r in listed if r.get("importer") is None]
    assert len(rows) == ROUNDS, out  # its training runs
    # and the aggregator's releases of the update volume it exports (the exporter's records)
    exported = [r for r in listed if r.get("importer") is not None]
    assert [r["importer"] for r in exported] == ["fl-aggregator"] * ROUNDS, out
    for row in exported:
        assert row["service"] == "aggregate" and row["measurement"] == wf.measurements["aggregate"]
        assert row["secrets"] == [{"name": "volume/update", "policy": "hospital-a", "version": 1}]
        assert row["attestation_index"] < row["index"] and row["included"]
    for row in rows:
        assert row["service"] == "train" and row["measurement"] == wf.measurements["train"]
        volumes = {v["name"]: v for v in row["volumes"]}
        assert set(volumes) == {"records", "update", "model"}
        assert volumes["model"]["owner"] == {"policy": "fl-model", "volume": "model"}
        assert volumes["records"]["update_policy"] == "ephemeral"
    agg = confide(wf.cas, "ledger", "accesses", "fl-aggregator", "--identity", wf.ident("auditor"), "--json")
    rows = json.loads(agg.stdout)
    assert len(rows) == ROUNDS
    assert {v["name"] for v in rows[0]["volumes"]} == {"model", "update-a", "update-b", "update-c"}
    # the auditor reads the policies and their events: names, hashes and tags, never a volume key
    # (the hospitals' and the model owner's policies declare theirs as fspf_key)
    texts = [out, agg.stdout]
    for policy in ("hospital-a", "fl-model"):
        texts.append(confide(wf.cas, "policy", "events", policy, "--identity", wf.ident("auditor")).stdout)
    texts.append(confide(wf.cas, "policy", "show", "hospital-b", "--identity", wf.ident("auditor")).stdout)
    assert '"fspf_key": "(withheld)"' in texts[-1]
    for text in texts:
        assert not any(k in text.lower() for k in secrets)
    state = wf.work / "auditor.state"
    deadline = time.time() + 30
    while True:  # a checkpoint covers every acknowledged entry within a second
        r = confide(wf.cas, "ledger", "verify", "--url", wf.cas.env["CONFIDE_LOG_URL"], "--key",
                    wf.cas.env["CONFIDE_LOG_KEY"], "--state", str(state), check=False)  # fmt: skip
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert r.returncode == 0 and r.stdout.startswith("verified"), r.stdout + r.stderr


def test_a_changed_policy_stops_the_exports_pinned_to_it(wf: Workflow) -> None:
    """Last: it changes policies. Hospital C changes its training: fl-model's export, pinned to
    C's old hash, stops C's training until the model owner re-pins. The model owner swaps the
    aggregator and re-pins its own export: the hospitals' exports, pinned to the aggregator
    they reviewed, stop it from reading their updates; the model's tag does not move."""
    train = str(EXAMPLE / "services" / "train.py")
    old_c = wf.hashes["hospital-c"]
    c2 = with_predecessor(wf.texts["hospital-c"], old_c).replace(
        f'LOCAL_EPOCHS: "{EPOCHS}"', 'LOCAL_EPOCHS: "8"'
    )
    wf.apply("hospital-c", c2, "hospital-c")
    r = wf.run("hospital-c/train", train, check=False)
    assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr
    assert "fl-model does not export volume model to this version of hospital-c" in r.stderr
    model_v2 = with_predecessor(wf.texts["fl-model"], wf.hashes["fl-model"]).replace(
        old_c, wf.hashes["hospital-c"]
    )
    wf.apply("fl-model", model_v2, "model-owner")
    assert "hospital-c: round" in wf.run("hospital-c/train", train).stdout

    manifest = wf.store / "model-owner" / "model" / "MANIFEST"
    model_before = manifest.read_bytes()
    v2 = wf.work / "aggregate-v2.py"
    v2.write_text((EXAMPLE / "services" / "aggregate.py").read_text() + "# v2\n")
    m_v2 = confide(wf.cas, "sim", "measure", "--", *wf.service(str(v2))).stdout.strip()
    old_agg = wf.hashes["fl-aggregator"]
    agg2 = with_predecessor(wf.texts["fl-aggregator"], old_agg).replace(wf.measurements["aggregate"], m_v2)
    wf.apply("fl-aggregator", agg2, "model-owner")
    model_v3 = with_predecessor(model_v2.replace(old_agg, wf.hashes["fl-aggregator"]), wf.hashes["fl-model"])
    wf.apply("fl-model", model_v3, "model-owner")
    r = wf.run("fl-aggregator/aggregate", str(v2), check=False)
    assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr
    assert "does not export volume update to this version of fl-aggregator" in r.stderr
    assert manifest.read_bytes() == model_before  # the refused aggregator wrote no model
