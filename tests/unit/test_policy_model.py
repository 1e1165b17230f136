"""Policy model and loader: the examples load; every kind of problem is reported with its
file, line and column; normalisation; round trip through the canonical form."""

from __future__ import annotations

import hashlib
import re
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from confide.errors import PolicyError
from confide.policy import Problem, load_policy, loads_policy, policy_hash
from confide.policy.access import is_authorized
from confide.policy.model import (
    Policy,
    RequireAll,
    RequireAtLeast,
    SecretKind,
    SignerRule,
    Tolerance,
    policy_warnings,
)
from confide.verify.result import Platform

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
MRE = "d08b7351eeb8d5c0653d32794218f183ac9c6fa3923b67052752f78a3559de61"


def doc(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def problems(text: str) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        loads_policy(text, source="p.yaml")
    found = [p for p in info.value.problems if isinstance(p, Problem)]
    assert found, info.value
    assert str(info.value).startswith("p.yaml: ")
    return found


def one(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


MINIMAL = doc(
    f"""
    name: app
    version: "0.3"
    services:
      - name: web
        attestation:
          mrenclave: {MRE}
    """
)


# --- the examples ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    policy = load_policy(path)
    assert isinstance(policy, Policy)
    assert len(policy_hash(policy)) == 64


def test_examples_cover_the_promised_features() -> None:
    sgx = load_policy(EXAMPLES / "sgx-webapp.yaml")
    api = sgx.service("api")
    assert [v.platform for v in api.variants()] == [Platform.SGX, Platform.SGX]
    assert sgx.service("database").variants()[0].mrenclave == (MRE,)  # deprecated mrenclaves
    assert {s.kind for s in sgx.secrets} >= {SecretKind.ASCII, SecretKind.BINARY, SecretKind.X509_CA}
    vms = load_policy(EXAMPLES / "confidential-vms.yaml")
    platforms = {v.platform for s in vms.services for v in s.variants()}
    assert platforms == {
        Platform.TDX,
        Platform.SEV_SNP,
        Platform.SIMULATED,
        Platform.NVIDIA_GPU,
        Platform.AWS_NITRO,
        Platform.GCE_TPM,
    }
    gce = vms.service("gcp-frontend").variants()[0].gce_tpm
    assert gce is not None and gce.secure_boot is True and gce.zone == ("europe-west4-a", "europe-west4-b")
    composite = vms.service("llm-gpus").variants()[0]
    assert composite.composite and composite.platform is Platform.TDX
    assert composite.nvidia_gpu is not None and composite.nvidia_gpu.count == 2


def test_the_examples_follow_their_own_advice() -> None:
    """No shipped example draws a warning from `policy apply` (a secret in a command's
    arguments, readable in /proc/PID/cmdline: docs/policy.md "Placeholders")."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert policy_warnings(load_policy(path)) == (), path.name


def test_multi_stakeholder_export_is_pinned_to_the_importers_hash() -> None:
    owner = load_policy(EXAMPLES / "data-owner.yaml")
    analytics = load_policy(EXAMPLES / "analytics-model-owner.yaml")
    export = owner.secret("dataset_key").export[0]
    assert export.session == analytics.name
    assert export.session_hash == policy_hash(analytics)
    imported = analytics.secret("dataset_key").import_
    assert imported is not None and (imported.session, imported.secret) == (owner.name, "dataset_key")


def test_pinned_hash_no_longer_matches_after_the_importer_changes() -> None:
    owner = load_policy(EXAMPLES / "data-owner.yaml")
    text = (EXAMPLES / "analytics-model-owner.yaml").read_text().replace("size", "size")
    changed = loads_policy(text.replace("--data /data", "--data /data2"))
    assert owner.secret("dataset_key").export[0].session_hash != policy_hash(changed)


# --- error kinds, each with its line and column -----------------------------------------------


def test_unknown_key_names_line_column_and_the_allowed_keys() -> None:
    p = one(MINIMAL + "    comand: ls\n")
    assert (p.line, p.column) == (7, 5)
    assert p.path == ("services", 0, "comand")
    assert "got unknown key 'comand'" in p.message and "command" in p.message
    assert str(p).startswith("p.yaml:7:5: services[0].comand: ")


def test_unknown_top_level_key() -> None:
    p = one(MINIMAL + "extra: 1\n")
    assert (p.line, p.column, p.path) == (7, 1, ("extra",))


def test_duplicate_key_is_an_error_with_position_and_no_values() -> None:
    text = doc(
        """
        name: app
        version: "0.3"
        secrets:
          - name: s
            kind: ascii
            value: first-secret-value
            value: second-secret-value
        """
    )
    with pytest.raises(PolicyError) as info:
        loads_policy(text, source="p.yaml")
    message = str(info.value)
    assert "p.yaml:7:5" in message and "duplicate key 'value'" in message
    assert "first-secret-value" not in message and "second-secret-value" not in message


def test_bad_value_reports_got_and_expected() -> None:
    p = one(MINIMAL.replace(MRE, "zz"))
    assert (p.line, p.column) == (6, 18)
    assert p.path == ("services", 0, "attestation", 0, "mrenclave", 0)
    assert "got 'zz', expected 64 hex digits" in p.message


def test_wrong_type_reports_yaml_type_names() -> None:
    text = MINIMAL + "secrets:\n  - name: s\n    kind: ascii\n    size: twelve\n"
    p = one(text)
    assert (p.line, p.column) == (10, 11)
    assert p.message == "got string 'twelve', expected an integer"


def test_boolean_is_not_an_integer_and_integer_is_not_a_string() -> None:
    found = problems(
        MINIMAL
        + "    environment:\n      PORT: 8080\n"
        + "secrets:\n  - name: s\n    kind: ascii\n    size: true\n"
    )
    messages = {p.path: p.message for p in found}
    assert messages[("services", 0, "environment", "PORT")] == (
        "got integer 8080, expected a string (quote values that look like numbers)"
    )
    assert messages[("secrets", 0, "size")] == "got boolean True, expected an integer"


def test_missing_key_points_at_the_enclosing_mapping() -> None:
    p = one(doc('version: "0.3"\nservices: []\n'))
    assert p.message == "missing required key 'name'"
    assert (p.line, p.column) == (1, 1)


def test_version_must_be_the_string_0_3() -> None:
    assert "quote it" in one(MINIMAL.replace('"0.3"', "0.3")).message
    p = one(MINIMAL.replace('"0.3"', '"0.2"'))
    assert p.message == "got string '0.2', expected '0.3'"
    assert (p.line, p.column) == (2, 10)


def test_bad_placeholder_syntax_has_a_location() -> None:
    p = one(MINIMAL + "    command: [run, $$SCONE::bad!name$$]\n")
    assert p.path == ("services", 0, "command", 1)
    assert (p.line, p.column) == (7, 20)
    assert "got placeholder body 'bad!name'" in p.message and "expected 'name' or 'name:format'" in p.message
    p = one(MINIMAL + "    command: run $$SCONE::bad name$$\n")
    assert "unterminated placeholder" in p.message and (p.line, p.column) == (7, 14)


def test_placeholder_naming_an_unknown_secret() -> None:
    p = one(MINIMAL + "    environment:\n      TOKEN: $$SCONE::nope$$\n")
    assert p.path == ("services", 0, "environment", "TOKEN")
    assert (p.line, p.column) == (8, 14)
    assert "unknown secret" in p.message


def test_placeholder_with_an_unknown_format() -> None:
    text = MINIMAL + "    environment:\n      K: $$SCONE::k:hexx$$\nsecrets:\n  - name: k\n    kind: binary\n"
    p = one(text)
    assert "got format 'hexx' for a binary secret" in p.message and "hex" in p.message


def test_binary_placeholder_not_allowed_in_environment_or_command() -> None:
    text = MINIMAL + "    environment:\n      K: $$SCONE::k$$\n    command: x $$SCONE::c:crt:der$$\n"
    text += "secrets:\n  - name: k\n    kind: binary\n  - name: c\n    kind: x509\n    private_key: pk\n"
    text += "  - name: pk\n    kind: private-key\n"
    found = problems(text)
    assert len(found) == 2
    assert all("binary" in p.message and "injected files" in p.message for p in found)


def test_every_problem_is_listed_not_just_the_first() -> None:
    text = doc(
        f"""
        name: "bad name"
        version: "0.3"
        services:
          - name: web
            command: [ok]
            bogus: 1
            attestation:
              - mrenclave: {MRE[:-2]}
              - tdx: {{mr_td: "00"}}
        """
    )
    found = problems(text)
    assert len(found) == 4
    assert {p.line for p in found} == {1, 6, 8, 9}


def test_cross_reference_problems_have_locations() -> None:
    text = MINIMAL + doc(
        """
        secrets:
          - name: cert
            kind: x509
            private_key: missing_key
            issuer: not_a_ca
          - name: not_a_ca
            kind: ascii
          - name: cert
            kind: ascii
        """
    )
    found = problems(text.replace("secrets:", "    image_name: img\nsecrets:"))
    by_path = {p.path: p for p in found}
    assert by_path[("services", 0, "image_name")].line == 7
    assert "expected the name of a private-key secret" in by_path[("secrets", 0, "private_key")].message
    assert "of kind ascii, expected a x509-ca secret" in by_path[("secrets", 0, "issuer")].message
    assert "duplicate name 'cert'" in by_path[("secrets", 2, "name")].message
    assert by_path[("secrets", 0, "private_key")].line == 11


def test_secret_values_are_never_echoed_in_errors() -> None:
    text = MINIMAL + "secrets:\n  - name: k\n    kind: private-key\n    value: TOPSECRETKEYMATERIAL\n"
    text += "  - name: b\n    kind: binary\n    value: TOPSECRETNOTHEX\n"
    text += "  - name: c\n    kind: ascii\n    value: [TOPSECRETLIST]\n"
    with pytest.raises(PolicyError) as info:
        loads_policy(text)
    assert "TOPSECRET" not in str(info.value)
    assert len(info.value.problems) == 3


# --- normalisation and rules -----------------------------------------------------------------


def test_single_values_and_lists_mean_the_same() -> None:
    one_value = loads_policy(MINIMAL)
    as_list = loads_policy(MINIMAL.replace(f"mrenclave: {MRE}", f"mrenclave: [{MRE.upper()}]"))
    listed_variant = loads_policy(
        MINIMAL.replace("attestation:\n      mrenclave", "attestation:\n      - mrenclave")
    )
    assert one_value == as_list == listed_variant
    assert policy_hash(one_value) == policy_hash(as_list) == policy_hash(listed_variant)


def test_command_string_is_split_like_scone() -> None:
    p = loads_policy(MINIMAL + """    command: mysql -e "show databases;" --x='a b'\n""")
    assert p.service("web").command == ("mysql", "-e", "show databases;", "--x=a b")
    assert "unterminated" in one(MINIMAL + """    command: run 'oops\n""").message


def test_a_variant_has_factors_of_one_platform() -> None:
    text = MINIMAL.replace(f"mrenclave: {MRE}", f"mrenclave: {MRE}\n      sim: {{measurement: {MRE}}}")
    assert "exactly one platform" in one(text).message
    assert "exactly one platform" in one(MINIMAL.replace(f"mrenclave: {MRE}", "{}")).message


H48 = "ab" * 48
GPU = f"nvidia-gpu: {{measurements: {{22: {H48}}}}}"


def variant(*factors: str) -> str:
    """MINIMAL with its variant's factors replaced by ``factors`` (one per line)."""
    return MINIMAL.replace(f"mrenclave: {MRE}", "\n      ".join(factors))


@pytest.mark.parametrize(
    ("cpu", "platform"),
    [
        (f"tdx: {{mr_td: {H48}}}", Platform.TDX),
        (f"sev-snp: {{measurement: {H48}}}", Platform.SEV_SNP),
        (f"sim: {{measurement: {H48}}}", Platform.SIMULATED),
    ],
)
def test_a_cpu_tee_variant_may_add_nvidia_gpu_factors(cpu: str, platform: Platform) -> None:
    sim_ok = "security:\n  attestation:\n    tolerate: [simulation]\n"
    text = variant(cpu, GPU.replace("{measurements", "{count: 4, measurements")) + sim_ok
    v = loads_policy(text).service("web").variants()[0]
    assert (v.platform, v.composite) == (platform, True)
    assert v.nvidia_gpu is not None and v.nvidia_gpu.count == 4
    # Listing the GPU first changes nothing; without nvidia-gpu it is not composite.
    first = loads_policy(variant(GPU, cpu) + sim_ok).service("web").variants()[0]
    assert (first.platform, first.composite) == (platform, True)
    alone = loads_policy(variant(cpu) + sim_ok).service("web").variants()[0]
    assert (alone.platform, alone.composite) == (platform, False)


def test_gpu_only_variant_keeps_its_meaning() -> None:
    v = loads_policy(variant(GPU)).service("web").variants()[0]
    assert (v.platform, v.composite) == (Platform.NVIDIA_GPU, False)
    assert loads_policy(variant(GPU.replace("{measurements", "{count: 1, measurements"))).service("web")


def test_composite_variant_hash_is_normalised_and_differs_from_the_cpu_only_one() -> None:
    plain = loads_policy(variant(f"tdx: {{mr_td: {H48}}}"))
    composite = loads_policy(variant(f"tdx: {{mr_td: {H48}}}", GPU))
    assert policy_hash(plain) != policy_hash(composite)
    again = loads_policy(variant(GPU, f"tdx: {{mr_td: [{H48.upper()}]}}"))
    assert policy_hash(again) == policy_hash(composite)


@pytest.mark.parametrize(
    ("factors", "position", "message"),
    [
        ((f"mrenclave: {MRE}", GPU), (6, 7), "got sgx with nvidia-gpu, expected nvidia-gpu alone or together"),
        ((f"aws-nitro: {{pcrs: {{0: {H48}}}}}", GPU), (6, 7), "got aws-nitro with nvidia-gpu"),
        ((f"tdx: {{mr_td: {H48}}}", f"sev-snp: {{measurement: {H48}}}", GPU), (6, 7), "got tdx, sev-snp, nvidia-gpu"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {count: 2}", f"sim: {{measurement: {H48}}}"), (6, 7), "exactly one platform"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {count: 0}"), (7, 27), "expected >= 1"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {count: 9}"), (7, 27), "expected <= 8"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {count: '2'}"), (7, 27), "expected an integer"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {count: true}"), (7, 27), "expected an integer"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {}"), (7, 19), "empty nvidia-gpu variant"),
        ((f"tdx: {{mr_td: {H48}}}", "nvidia-gpu: {counts: 2}"), (7, 20), "unknown key 'counts'"),
        (("nvidia-gpu: {count: 2, driver_version: '1'}",), (6, 27), "got count 2 without a CPU TEE"),
    ],
)  # fmt: skip
def test_invalid_composite_variants(
    factors: tuple[str, ...], position: tuple[int, int], message: str
) -> None:
    p = one(variant(*factors))
    assert message in p.message, p
    assert (p.line, p.column) == position, p
    assert p.path[:4] == ("services", 0, "attestation", 0)


def test_a_service_needs_attestation_and_sim_needs_the_simulation_tolerance() -> None:
    assert "expected 'attestation'" in one(doc('name: a\nversion: "0.3"\nservices:\n  - name: w\n')).message
    sim = MINIMAL.replace(f"mrenclave: {MRE}", f"sim: {{measurement: {MRE}}}")
    assert "tolerate to include 'simulation'" in one(sim).message
    ok = loads_policy(sim + "security:\n  attestation:\n    tolerate: [simulation]\n")
    assert ok.service("web").variants()[0].platform is Platform.SIMULATED


def test_signer_rules() -> None:
    ok = loads_policy(
        MINIMAL.replace(f"mrenclave: {MRE}", f"signer: {{mrsigner: {MRE}, isvprodid: 1, isvsvn_min: 3}}")
    )
    signer = ok.service("web").variants()[0].signer
    assert signer is not None and (signer.isvprodid, signer.isvsvn_min, signer.isvsvn) == (1, 3, None)
    both = MINIMAL.replace(
        f"mrenclave: {MRE}", f"signer: {{mrsigner: {MRE}, isvprodid: 1, isvsvn: 2, isvsvn_min: 1}}"
    )
    assert "one or the other" in one(both).message
    rng = MINIMAL.replace(
        f"mrenclave: {MRE}", f"signer: {{mrsigner: {MRE}, isvprodid: 1, isvsvn_min: 5, isvsvn_max: 2}}"
    )
    assert "min <= max" in one(rng).message
    big = MINIMAL.replace(f"mrenclave: {MRE}", f"signer: {{mrsigner: {MRE}, isvprodid: 70000}}")
    assert one(big).message == "got integer 70000, expected <= 65535"


def test_attestation_mode_none_is_refused() -> None:
    p = one(MINIMAL + "security:\n  attestation:\n    mode: none\n")
    assert "expected 'hardware'" in p.message


def test_wildcard_advisories_need_debug_mode() -> None:
    text = MINIMAL + 'security:\n  attestation:\n    tolerate: [outdated-tcb]\n    ignore_advisories: "*"\n'
    assert "without debug-mode" in one(text).message
    ok = loads_policy(text.replace("[outdated-tcb]", "[outdated-tcb, debug-mode]"))
    assert ok.security.attestation.ignore_advisories == "*"


def test_tolerances_and_advisories_are_sets() -> None:
    a = loads_policy(
        MINIMAL + "security:\n  attestation:\n    tolerate: [outdated-tcb, hyperthreading]\n"
        "    ignore_advisories: [intel-sa-00161, INTEL-SA-00081]\n"
    )
    b = loads_policy(
        MINIMAL + "security:\n  attestation:\n    tolerate: [hyperthreading, outdated-tcb, outdated-tcb]\n"
        "    ignore_advisories: [INTEL-SA-00081, INTEL-SA-00161]\n"
    )
    assert a == b
    assert a.security.attestation.tolerate == (Tolerance.HYPERTHREADING, Tolerance.OUTDATED_TCB)
    bad = one(MINIMAL + "security:\n  attestation:\n    tolerate: [debugmode]\n")
    assert "got string 'debugmode', expected" in bad.message and "'debug-mode'" in bad.message


# Access entries are identities' fingerprints (SHA-256 hex, as confide identity create prints
# them): symbolic names in the rules below stand for these.
FP = {n: hashlib.sha256(n.encode()).hexdigest() for n in ("v1", "v2", "v3", "veto", "veto1")}


def _named(text: str) -> str:
    return re.sub(r"\b(v1|v2|v3|veto1|veto)\b", lambda m: FP[m.group(1)], text)


def test_access_policy_boards() -> None:
    text = MINIMAL + doc(
        """
        access_policy:
          read: NONE
          update:
            require-all:
              - require-at-least-2:
                  - signer: v1
                  - signer: v2
                  - signer: v3
              - require-all:
                  - signer: veto1
        """
    )
    p = loads_policy(_named(text))
    assert p.access_policy.read == ("NONE",)
    (board,) = p.access_policy.update
    assert isinstance(board, RequireAll)
    inner = board.require_all[0]
    assert isinstance(inner, RequireAtLeast) and inner.n == 2 and len(inner.rules) == 3
    assert isinstance(inner.rules[0], SignerRule)
    assert p.access_policy.effective_create_sessions == p.access_policy.update


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ("{require-at-least-3: [{signer: a}, {signer: b}]}", "N <= 2"),
        ("{require-at-least-0: [{signer: a}]}", "expected >= 1"),
        ("[ANY, CREATOR]", "ANY alone"),
        ("{require-some: [{signer: a}]}", "expected an identity string"),
        ("{require-all: []}", "expected at least 1"),
        # what an entry may be since fingerprints are required (not a key hash or certificate)
        ('[""]', "expected an identity's fingerprint (64 lower-case hex digits), CREATOR, ANY, NONE or"),
    ],
)
def test_access_policy_errors(update: str, expected: str) -> None:
    found = problems(MINIMAL + f"access_policy:\n  update: {update}\n")
    assert any(expected in p.message for p in found), found
    assert all(p.line is not None and p.line >= 7 for p in found)


def test_board_not_allowed_in_read() -> None:
    assert (
        "boards only in update"
        in one(MINIMAL + "access_policy:\n  read:\n    require-all: [{signer: a}]\n").message
    )


# --- secrets ---------------------------------------------------------------------------------


KEY = "- name: k\n  kind: private-key\n"


def _secret(body: str) -> str:
    return MINIMAL + "secrets:\n" + textwrap.indent(doc(body), "  ")


def test_explicit_keys_are_checked_against_key_type() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    block = textwrap.indent(pem, "      ")
    ok = loads_policy(_secret("- name: k\n  kind: private-key\n  key_type: P-256\n  value: |\n") + block)
    assert ok.secret("k").value == pem
    bad = one(_secret("- name: k\n  kind: private-key\n  key_type: Ed25519\n  value: |\n") + block)
    assert bad.message == "got a P-256 key in value, expected key_type Ed25519"
    assert "-----BEGIN" not in bad.message


def test_public_key_secret_from_private_key_or_value() -> None:
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    loads_policy(_secret("- name: p\n  kind: public-key\n  value: |\n") + textwrap.indent(pem, "      "))
    loads_policy(_secret("- name: k\n  kind: private-key\n- name: p\n  kind: public-key\n  private_key: k\n"))
    assert "exactly one" in one(_secret("- name: p\n  kind: public-key\n")).message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("- name: s\n  kind: ascii\n  size: 0\n", "expected >= 1"),
        ("- name: s\n  kind: ascii\n  key_type: P-256\n", "got key_type for a ascii secret"),
        ("- name: s\n  kind: binary\n  size: 4\n  value: ab\n", "one or the other"),
        ("- name: s\n  kind: binary\n  value: xyz\n", "expected hex-encoded bytes"),
        ("- name: s\n  kind: x509\n", "expected a private-key secret name"),
        (
            KEY + "- name: s\n  kind: x509\n  private_key: k\n  endpoint: client\n  dns: a.b\n",
            "only for server",
        ),
        (
            KEY + "- name: s\n  kind: x509-ca\n  private_key: k\n  endpoint: server\n",
            "got endpoint for a x509-ca secret",
        ),
        (
            KEY + "- name: s\n  kind: x509\n  private_key: k\n  valid_for: 3 fortnights\n",
            "expected a duration",
        ),
        (
            KEY + "- name: s\n  kind: x509\n  private_key: k\n  valid_for: 1d\n  renew_before: 2d\n",
            "renew_before shorter",
        ),
        ("- name: s\n  import: {session: other, secret: x}\n  size: 3\n", "imported secret"),
        (
            "- name: s\n  import: {session: other, secret: x}\n  export: {session: third}\n",
            "cannot be re-exported",
        ),
        ("- name: s\n  kind: ascii\n  export: {session: a, namespace: b}\n", "exactly one"),
        ("- name: s\n  size: 3\n", "got no kind"),
        ("- name: s.crt\n  kind: ascii\n", "expected 1-128 characters"),
        ("- name: k\n  kind: private-key\n  migrate: yes\n", "expected a boolean"),
        (
            KEY + "- name: s\n  kind: x509\n  private_key: k\n  dns: [-bad-.com]\n",
            "expected a DNS name",
        ),
    ],
)
def test_secret_rules(body: str, expected: str) -> None:
    found = problems(_secret(body))
    assert any(expected in p.message for p in found), found


def test_secret_kinds_and_san() -> None:
    p = loads_policy(
        _secret(
            """
            - name: k
              kind: private-key
              key_type: RSA-3072
            - name: ca
              kind: x509-ca
              private_key: k
              valid_for: 1 year
            - name: leaf
              kind: x509
              private_key: k
              issuer: ca
              san: [svc.local, 10.0.0.1, "::1"]
              valid_for: 90d
              renew_before: 30d
            """
        )
    )
    assert p.secret("leaf").san == ("svc.local", "10.0.0.1", "::1")
    assert p.secret("leaf").generated


def test_issuer_cycle_is_refused() -> None:
    text = _secret(
        """
        - name: k
          kind: private-key
        - name: a
          kind: x509-ca
          private_key: k
          issuer: b
        - name: b
          kind: x509-ca
          private_key: k
          issuer: a
        """
    )
    assert any("cycle" in p.message for p in problems(text))


def test_volumes_and_images() -> None:
    good = MINIMAL + doc(
        f"""
        volumes:
          - name: v
          - name: w
            export:
              - session: other
              - to: {{session: third, session_hash: {MRE}}}
                update_policy: ephemeral
        images:
          - name: img
            volumes: [{{name: v, path: /data}}]
            injection_files:
              - /etc/app.conf
              - path: /etc/other.conf
                content: "x"
        """
    )
    p = loads_policy(good)
    assert p.image("img").injection_files[0].content is None
    bad = MINIMAL + "images:\n  - name: img\n    volumes: [{name: nope, path: data}]\n"
    found = problems(bad)
    assert {p.message.split(",")[0] for p in found} == {"got 'data'"}
    found = problems(bad.replace("path: data", "path: /data"))
    assert found[0].message == "got 'nope', expected the name of a volume"
    assert "fspf" in one(MINIMAL + "volumes:\n  - name: v\n    fspf_key: " + MRE + "\n").message
    assert (
        "fspf_key"
        in one(
            MINIMAL
            + f"volumes:\n  - name: v\n    fspf_key: '$$SCONE::k$$'\n    fspf_tag: {MRE[:32]}\n"
            + "secrets:\n  - name: k\n    kind: ascii\n"
        ).message
    )


def test_round_trip_through_the_canonical_form() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        policy = load_policy(path)
        again = Policy.model_validate(policy.model_dump(mode="json", by_alias=True, exclude_defaults=True))
        assert again == policy
        assert policy_hash(again) == policy_hash(policy)


def test_unquoted_numeric_hex_gets_a_quoting_hint() -> None:
    p = one(MINIMAL.replace(f"mrenclave: {MRE}", "mrenclave: " + "1" * 64))
    assert "quote values that look like numbers" in p.message
    p = one(MINIMAL.replace(f"mrenclave: {MRE}", "signer: {mrsigner: " + "1" * 64 + ", isvprodid: 1}"))
    assert p.message.endswith("expected a string (quote values that look like numbers)")


def test_board_members_must_be_distinct() -> None:
    p = one(MINIMAL + "access_policy:\n  update:\n    require-at-least-2: [{signer: a}, a, {signer: b}]\n")
    assert "listed twice" in p.message


def test_is_authorized_evaluates_boards() -> None:
    text = MINIMAL + doc(
        """
        access_policy:
          read: [CREATOR, "$$SCONE::auditor$$"]
          update:
            require-all:
              - require-at-least-2: [{signer: v1}, {signer: v2}, {signer: v3}]
              - signer: veto
          create_sessions: NONE
        secrets:
          - name: auditor
            kind: private-key
            key_type: Ed25519
        """
    )
    ap = loads_policy(_named(text)).access_policy
    assert is_authorized(ap.update, {FP["v1"], FP["v3"], FP["veto"]}, creator="c")
    assert not is_authorized(ap.update, {FP["v1"], FP["veto"]}, creator="c")
    assert not is_authorized(ap.update, {FP["v1"], FP["v2"], FP["v3"]}, creator="c")
    assert not is_authorized(ap.update, set(), creator=None)
    assert is_authorized(ap.read, {"c"}, creator="c")
    assert not is_authorized(ap.read, {"c"}, creator="someone-else")
    assert not is_authorized(ap.read, {"audit-key"}, creator="c")  # no resolver: no one
    assert is_authorized(ap.read, {"audit-key"}, creator="c", resolve={"auditor": "audit-key"}.get)
    assert not is_authorized(ap.read, {"x"}, creator="c", resolve={}.get)
    assert not is_authorized(ap.effective_create_sessions, {"c", FP["v1"]}, creator="c")
    anyone = loads_policy(MINIMAL + "access_policy:\n  read: ANY\n").access_policy
    assert is_authorized(anyone.read, set(), creator=None)
    default = loads_policy(MINIMAL).access_policy
    assert is_authorized(default.update, {"me"}, creator="me")
    assert is_authorized(default.effective_create_sessions, {"me"}, creator="me")
    assert not is_authorized(default.update, {"me"}, creator="other")


@pytest.mark.parametrize(
    "path",
    ["/run//a", "/run/./a", "/run/x/../a", "/run/a/", "/", "//run/a", "/run/a/.."],
)
def test_injection_and_volume_paths_are_written_one_way(path: str) -> None:
    # Two spellings of one file passed the check for a path given twice (confide run then wrote
    # it twice, the later content and mode replacing the earlier)
    text = MINIMAL + doc(
        f"""
        volumes:
          - name: v
        images:
          - name: img
            volumes:
              - name: v
                path: /data
            injection_files:
              - path: /run/a
                content: first
              - path: {path}
                content: second
        """
    )
    p = one(text)
    assert p.path == ("images", 0, "injection_files", 1, "path")
    assert "expected an absolute path written plainly" in p.message and (p.line, p.column) == (17, 15)
    vol = one(
        text.replace("path: /data", f"path: {path}").replace(
            f"path: {path}\n        content", "path: /b\n        content"
        )
    )
    assert vol.path == ("images", 0, "volumes", 0, "path")
    # a version the CAS stored before still loads
    assert loads_policy(text, stored=True).images[0].injection_files[1].path == path
    assert loads_policy(text.replace(path, "/run/b")).images[0].injection_files[1].path == "/run/b"


def test_a_services_working_directory_is_absolute() -> None:
    # confide run changes to pwd from the directory the host started it in: a relative pwd let
    # the host choose where the program runs (and what its relative paths name)
    text = MINIMAL + "    pwd: app/data\n"
    p = one(text)
    assert p.path == ("services", 0, "pwd") and "expected an absolute path" in p.message
    assert (p.line, p.column) == (7, 10)
    assert loads_policy(text, stored=True).services[0].pwd == "app/data"  # stored before: loads
    assert loads_policy(MINIMAL + "    pwd: /app/data\n").services[0].pwd == "/app/data"
