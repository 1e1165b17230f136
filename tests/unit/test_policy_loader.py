"""Hostile YAML: bounded size and depth, no anchors/aliases/tags, only PolicyError escapes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confide.errors import PolicyError, UsageError
from confide.policy import Problem, load_policy, loads_policy
from confide.policy.loader import MAX_BYTES, MAX_DEPTH, MAX_NODES

MRE = "d08b7351eeb8d5c0653d32794218f183ac9c6fa3923b67052752f78a3559de61"
MINIMAL = f'name: app\nversion: "0.3"\nservices:\n  - name: web\n    attestation:\n      mrenclave: {MRE}\n'


def refused(text: str | bytes) -> Problem:
    with pytest.raises(PolicyError) as info:
        loads_policy(text, source="h.yaml")
    (problem,) = info.value.problems
    assert isinstance(problem, Problem)
    return problem


def test_minimal_policy_loads_from_text_and_bytes() -> None:
    assert loads_policy(MINIMAL) == loads_policy(MINIMAL.encode())


def test_billion_laughs_is_refused_at_the_first_anchor() -> None:
    lol = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    lol += "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    p = refused(lol)
    assert "anchor" in p.message and (p.line, p.column) == (1, 4)


def test_alias_is_refused() -> None:
    p = refused(MINIMAL + "x: *undefined\n")
    assert "alias" in p.message or "malformed" in p.message


@pytest.mark.parametrize(
    "tagged",
    ["x: !!python/object:os.system [ls]\n", "x: !custom 1\n", "x: !!binary aGVsbG8=\n", "x: !!str 1\n"],
)
def test_explicit_tags_are_refused(tagged: str) -> None:
    p = refused(MINIMAL + tagged)
    assert "tag" in p.message and p.line == 7


def test_depth_is_bounded() -> None:
    p = refused("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert f"deeper than {MAX_DEPTH}" in p.message
    deep = "a: " + "[" * 100_000
    assert "deeper" in refused(deep).message


def test_size_is_bounded() -> None:
    big = MINIMAL + "# " + "x" * MAX_BYTES + "\n"
    assert "more than" in refused(big).message
    assert "more than" in refused(big.encode()).message


def test_node_count_is_bounded() -> None:
    many = "a: [" + ",".join(["1"] * (MAX_NODES + 1)) + "]\n"
    assert f"more than {MAX_NODES} YAML nodes" in refused(many).message


def test_invalid_utf8_and_odd_text() -> None:
    assert "invalid UTF-8" in refused(b"name: \xff\xfe\n").message
    assert "lone surrogate" in refused("name: \ud800\n").message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty document"),
        ("# only a comment\n", "empty document"),
        ("- a\n- b\n", "got a sequence at the top level"),
        ("just text\n", "got a string at the top level"),
        ("a: 1\n---\nb: 2\n", "malformed YAML"),
        ("a: [1, 2\n", "malformed YAML"),
        ("a:\n\tb: 1\n", "malformed YAML"),
        ("? [a, b]\n: 1\n", "got a sequence key"),
        ("null: 1\n", "got a null key"),
    ],
)
def test_malformed_documents(text: str, expected: str) -> None:
    assert expected in refused(text).message


def test_timestamps_and_floats_are_wrong_types_not_crashes() -> None:
    with pytest.raises(PolicyError) as info:
        loads_policy(MINIMAL + "secrets:\n  - name: s\n    kind: ascii\n    size: 2001-12-14\n")
    assert "got timestamp" in str(info.value)
    with pytest.raises(PolicyError) as info:
        loads_policy(MINIMAL + "secrets:\n  - name: s\n    kind: ascii\n    size: .inf\n")
    assert "got float inf, expected an integer" in str(info.value)


def test_yaml_1_2_keeps_no_as_a_string() -> None:
    policy = loads_policy(MINIMAL + "    environment:\n      FLAG: no\n")
    assert policy.service("web").environment == {"FLAG": "no"}


def test_integer_keys_become_strings_where_indices_are_expected() -> None:
    text = MINIMAL.replace(
        f"mrenclave: {MRE}",
        "aws-nitro:\n        pcrs:\n          0: " + "ab" * 48 + "\n          0x1: " + "cd" * 48,
    )
    policy = loads_policy(text)
    variant = policy.service("web").variants()[0]
    assert variant.aws_nitro is not None and set(variant.aws_nitro.pcrs) == {"0", "1"}


@pytest.mark.parametrize("key", ["2[a", "function-x", "union[y", "tuple[z"])
def test_unknown_keys_that_look_like_pydantic_segments_are_reported(key: str) -> None:
    # Such keys were dropped from the error's path as pydantic-internal, which left it empty:
    # IndexError instead of a PolicyError (found by the mutation campaign).
    problem = refused(MINIMAL + f"{key}: 1\n")
    assert problem.path == (key,) and problem.message.startswith(f"got unknown key {key!r}")
    assert (problem.line, problem.column) == (7, 1)
    nested = refused(MINIMAL + f"    {key}: 1\n")
    assert nested.path == ("services", 0, key) and nested.line == 7


def test_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_policy(tmp_path / "missing.yaml")
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL + "bogus: 1\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert f"{path}:7:1: bogus" in str(info.value)


_yaml_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.just("$$SCONE::"),
)
_yaml_trees = st.recursive(
    _yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "version",
                    "services",
                    "secrets",
                    "attestation",
                    "mrenclave",
                    "kind",
                    "value",
                    "command",
                    "environment",
                    "access_policy",
                    "update",
                    "require-all",
                    "require-at-least-2",
                    "signer",
                    "tdx",
                    "security",
                    "tolerate",
                    "images",
                    "injection_files",
                    "path",
                    "content",
                    "export",
                    "import",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


def _to_yaml(value: object) -> str:
    return json.dumps(value)  # JSON is YAML 1.2 (flow style)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_only_raises_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        loads_policy(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_policy_error(data: bytes) -> None:
    with contextlib.suppress(PolicyError):
        loads_policy(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_trees)
def test_random_structures_only_raise_policy_error(tree: object) -> None:
    document = {"name": "app", "version": "0.3", "services": [tree]} if not isinstance(tree, dict) else tree
    try:
        loads_policy(_to_yaml(document))
    except PolicyError as exc:
        assert exc.problems
        assert all(isinstance(p, Problem) and p.line is not None for p in exc.problems), exc.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_trees, _yaml_trees, _yaml_trees, _yaml_trees)
def test_random_sections_of_a_valid_skeleton_only_raise_policy_error(
    service: object, secret: object, access: object, security: object
) -> None:
    document = {
        "name": "app",
        "version": "0.3",
        "services": [service if isinstance(service, dict) else {"name": "s", "attestation": service}],
        "secrets": [secret],
        "access_policy": access,
        "security": {"attestation": security},
    }
    try:
        loads_policy(_to_yaml(document))
    except PolicyError as exc:
        assert exc.problems
        assert all(isinstance(p, Problem) and p.line is not None for p in exc.problems), exc.problems
