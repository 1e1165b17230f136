"""Pending tags: an owner who stages changes over several `confide volume add|rm` commands on a
directory it does not trust detects a host that puts an earlier MANIFEST.pending (with its
record) back (docs/volume-format.md, "Pending tag"). Real files throughout; the crash tests kill
a real process with SIGKILL between the two writes of a staging step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from confide.errors import ParseError, RollbackError, UsageError
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, verify_volume
from confide.volume.cli import volume
from confide.volume.format import pending_base_mac, pending_tag
from confide.volume.store import (
    PENDING_BASE_NAME,
    PENDING_NAME,
    load_sealed,
    remove_paths,
)

CS = 4096
KEY = VolumeKey(bytes(range(32)))
SRC = Path(__file__).resolve().parents[2] / "src"


def _src(tmp: Path, name: str, data: bytes) -> Path:
    d = tmp / f"src-{name}-{len(list(tmp.glob('src-*')))}"
    d.mkdir()
    (d / name).write_bytes(data)
    os.utime(d / name, (1_700_000_000, 1_700_000_000))
    return d / name


def _snapshot(vol: Path) -> dict[str, bytes]:
    """Every file of the volume directory (the lock file aside) with its bytes."""
    return {
        str(p.relative_to(vol)): p.read_bytes()
        for p in sorted(vol.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _staged(vol: Path) -> dict[str, bytes]:
    """What a host keeps to put a staged state back: the pending manifest and its record."""
    return {name: (vol / name).read_bytes() for name in (PENDING_NAME, PENDING_BASE_NAME)}


def _put_back(vol: Path, staged: dict[str, bytes]) -> None:
    for name, data in staged.items():
        (vol / name).write_bytes(data)


def _volume(tmp: Path) -> tuple[Path, str]:
    """A volume sealed at a tag, holding a.txt."""
    vol = tmp / "vol"
    create_volume(vol, KEY, chunk_size=CS)
    add_sources(vol, KEY, [_src(tmp, "a.txt", b"a")])
    return vol, seal_volume(vol, KEY)


def _keyfile(tmp: Path) -> Path:
    keyfile = tmp / "key"
    keyfile.write_text(KEY.raw.hex() + "\n")
    os.chmod(keyfile, 0o600)
    return keyfile


# --- the normal path ----------------------------------------------------------------------------


def test_add_add_rm_chain_and_seal_with_the_last_pending_tag(tmp_path: Path) -> None:
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")], expected_tag=tag1, expected_pending="none")
    s2 = add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_pending=s1.pending_tag)
    s3 = remove_paths(vol, KEY, ["a.txt"], expected_pending=s2.pending_tag.upper() + "\n")  # normalised
    assert (s1.step, s2.step, s3.step) == (1, 2, 3)
    assert len({s1.pending_tag, s2.pending_tag, s3.pending_tag}) == 3
    assert [e.path for e in s1] == ["b.txt"] and [e.path for e in s3] == ["a.txt"]  # still the entries
    tag2 = seal_volume(vol, KEY, tag1, expected_pending=s3.pending_tag)
    assert sorted(load_sealed(vol, KEY, tag2)[0].by_path()) == ["b.txt", "c.txt"]
    assert verify_volume(vol, KEY, tag2).ok
    # the next chain starts at step 1 on the new base
    s4 = add_sources(vol, KEY, [_src(tmp_path, "d.txt", b"d")], expected_tag=tag2, expected_pending="none")
    assert s4.step == 1
    # nothing pending after the seal: "none" and no option pass; a pending tag does not
    assert seal_volume(vol, KEY, expected_pending=s4.pending_tag) != tag2
    assert seal_volume(vol, KEY, expected_pending="none") == load_sealed(vol, KEY)[1]


def test_the_pending_tag_is_what_the_record_says_and_recomputable(tmp_path: Path) -> None:
    """The record holds the base tag, the step and the pending tag, which is the documented MAC
    over the pending manifest's bytes (format.pending_tag)."""
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    s2 = remove_paths(vol, KEY, ["a.txt"])
    lines = (vol / PENDING_BASE_NAME).read_text("ascii").split("\n")
    assert lines == [
        "confide-volume-pending 2",
        f"{tag1} 2 {s2.pending_tag}",
        f"{tag1} 1 {s1.pending_tag}",  # the state before this step (crash safety)
        "",
    ]
    vid = load_sealed(vol, KEY)[0].volume_id
    assert pending_tag(KEY.raw, vid, (vol / PENDING_NAME).read_bytes(), tag1, 2) == s2.pending_tag


# --- a host puts an earlier staged state back ---------------------------------------------------


@pytest.mark.parametrize("earlier", [1, 2])
def test_an_earlier_pending_manifest_put_back_is_refused(tmp_path: Path, earlier: int) -> None:
    """Stage add, add, rm; the host puts back the pending manifest and record of step 1 or 2:
    before, the seal dropped the later changes (and removed their objects) without an error,
    even with --expect-tag."""
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")], expected_tag=tag1)
    kept = {1: _staged(vol)}
    s2 = add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_pending=s1.pending_tag)
    kept[2] = _staged(vol)
    s3 = remove_paths(vol, KEY, ["a.txt"], expected_pending=s2.pending_tag)
    _put_back(vol, kept[earlier])
    before = _snapshot(vol)
    older = (s1, s2)[earlier - 1]
    want = rf"got {older.pending_tag} \(step {earlier}\), expected {s3.pending_tag}"
    with pytest.raises(RollbackError, match=want):
        seal_volume(vol, KEY, tag1, expected_pending=s3.pending_tag)
    with pytest.raises(RollbackError, match=want):
        add_sources(vol, KEY, [_src(tmp_path, "d.txt", b"d")], expected_pending=s3.pending_tag)
    with pytest.raises(RollbackError, match=want):
        remove_paths(vol, KEY, ["b.txt"], expected_pending=s3.pending_tag)
    assert _snapshot(vol) == before  # nothing changed: c.txt's object is still there
    # without the option the old behaviour stays (the --expect-tag check passes: same base), and
    # what was staged after the state put back is lost: what the option is for
    tag2 = seal_volume(vol, KEY, tag1)
    kept_paths = {1: ["a.txt", "b.txt"], 2: ["a.txt", "b.txt", "c.txt"]}[earlier]
    assert sorted(load_sealed(vol, KEY, tag2)[0].by_path()) == kept_paths


def test_a_removed_pending_manifest_is_refused(tmp_path: Path) -> None:
    """The host deletes the staged changes (pending manifest and record): an expected pending
    tag then finds nothing, and is refused rather than sealing (or staging on) the old version."""
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    (vol / PENDING_NAME).unlink()
    (vol / PENDING_BASE_NAME).unlink()
    with pytest.raises(RollbackError, match=f"got no {PENDING_NAME}.*expected pending tag {s1.pending_tag}"):
        seal_volume(vol, KEY, tag1, expected_pending=s1.pending_tag)
    with pytest.raises(RollbackError, match=f"got no {PENDING_NAME}"):
        add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_pending=s1.pending_tag)
    assert load_sealed(vol, KEY)[1] == tag1 and not (vol / PENDING_NAME).exists()


def test_the_counter_refuses_an_earlier_state_with_the_same_content(tmp_path: Path) -> None:
    """add x, rm x, add x again (deterministic, same time): steps 1 and 3 stage the very same
    pending manifest bytes; the earlier one (with its record) still has another tag."""
    vol, tag1 = _volume(tmp_path)
    x = _src(tmp_path, "x.txt", b"x")
    s1 = add_sources(vol, KEY, [x], deterministic=True, mtime_ns=0)
    kept = _staged(vol)
    s2 = remove_paths(vol, KEY, ["x.txt"], expected_pending=s1.pending_tag)
    s3 = add_sources(vol, KEY, [x], deterministic=True, mtime_ns=0, expected_pending=s2.pending_tag)
    assert (vol / PENDING_NAME).read_bytes() == kept[PENDING_NAME]  # the same staged bytes
    assert s3.step == 3 and s3.pending_tag != s1.pending_tag
    _put_back(vol, kept)
    with pytest.raises(RollbackError, match=rf"got {s1.pending_tag} \(step 1\), expected {s3.pending_tag}"):
        seal_volume(vol, KEY, tag1, expected_pending=s3.pending_tag)


def test_a_pending_tag_of_another_volume_or_base_is_refused(tmp_path: Path) -> None:
    """Two volumes under one key, the same file staged in both: each one's pending tag is
    refused by the other. A tag staged on an earlier base (sealed since) is refused on the next."""
    vol, tag1 = _volume(tmp_path)
    other = tmp_path / "other"
    create_volume(other, KEY, chunk_size=CS)
    x = _src(tmp_path, "x.txt", b"x")
    mine = add_sources(vol, KEY, [x], deterministic=True, mtime_ns=0)
    theirs = add_sources(other, KEY, [x], deterministic=True, mtime_ns=0)
    assert mine.step == theirs.step == 1 and mine.pending_tag != theirs.pending_tag
    for directory, wrong in ((vol, theirs), (other, mine)):
        with pytest.raises(RollbackError, match=f"got .* expected {wrong.pending_tag}"):
            seal_volume(directory, KEY, expected_pending=wrong.pending_tag)
    tag2 = seal_volume(vol, KEY, tag1, expected_pending=mine.pending_tag)
    later = remove_paths(vol, KEY, ["x.txt"], expected_tag=tag2)
    with pytest.raises(RollbackError, match=f"expected {mine.pending_tag}"):
        seal_volume(vol, KEY, tag2, expected_pending=mine.pending_tag)
    # the same bytes, step and volume on another base: another tag
    vid = load_sealed(vol, KEY)[0].volume_id
    data = (vol / PENDING_NAME).read_bytes()
    assert (
        pending_tag(KEY.raw, vid, data, tag1, 1)
        != pending_tag(KEY.raw, vid, data, tag2, 1)
        == later.pending_tag
    )


def test_expect_pending_none_refuses_staged_changes(tmp_path: Path) -> None:
    """A host that puts back changes the owner staged and then threw away (removed
    MANIFEST.pending) cannot have the owner's first add of a new chain build on them."""
    vol, tag1 = _volume(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    kept = _staged(vol)
    (vol / PENDING_NAME).unlink()
    (vol / PENDING_BASE_NAME).unlink()
    _put_back(vol, kept)
    before = _snapshot(vol)
    with pytest.raises(RollbackError, match=r"got a staged MANIFEST.pending \(step 1, .*expected none"):
        add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_tag=tag1, expected_pending="none")
    assert _snapshot(vol) == before


def test_a_malformed_expected_pending_tag_is_a_usage_error(tmp_path: Path) -> None:
    vol, _tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    before = _snapshot(vol)
    for bad in (s1.pending_tag[:-1], s1.pending_tag[:-1] + "g", "", "nothing"):
        with pytest.raises(UsageError, match="64 hex digits"):
            seal_volume(vol, KEY, expected_pending=bad)
    assert _snapshot(vol) == before


@pytest.mark.parametrize(
    "edit", ["step", "base", "tag", "three-lines", "leading-zero", "too-long", "no-newline", "fifo"]
)
def test_a_record_the_host_edited_does_not_authenticate(tmp_path: Path, edit: str) -> None:
    """The record is host storage, read strictly and bounded: any edit is "no authentic record",
    refused with an expected pending tag (and with an expected tag, as before)."""
    vol, tag1 = _volume(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    s2 = add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")])
    path = vol / PENDING_BASE_NAME
    head, first, second, _ = path.read_text("ascii").split("\n")
    base, step, tag = first.split(" ")
    flip = {"0": "1"}
    lines = [head, first, second]
    if edit == "step":
        lines[1] = f"{base} 7 {tag}"
    elif edit == "base":
        lines[1] = f"{base[:-1]}{flip.get(base[-1], '0')} {step} {tag}"
    elif edit == "tag":
        lines[1] = f"{base} {step} {tag[:-1]}{flip.get(tag[-1], '0')}"
    elif edit == "three-lines":
        lines = [head, second, second, first]
    elif edit == "leading-zero":
        lines[1] = f"{base} 0{step} {tag}"
    elif edit == "too-long":
        lines[2] = second + " " * 400
    text = "\n".join(lines) + ("" if edit == "no-newline" else "\n")
    path.unlink()
    if edit == "fifo":
        os.mkfifo(path)  # never opened for a blocking read
    else:
        path.write_text(text, "ascii")
    with pytest.raises(RollbackError, match="no authentic base record"):
        seal_volume(vol, KEY, expected_pending=s2.pending_tag)
    with pytest.raises(RollbackError, match="no authentic base tag"):
        seal_volume(vol, KEY, tag1)


def test_a_pending_manifest_with_an_old_record_still_seals(tmp_path: Path) -> None:
    """A pending manifest staged by a confide that wrote version 1 records (base tag and MAC, no
    pending tag): sealed without the new option as before, with --expect-tag too; an expected
    pending tag cannot be shown and is refused; the next add restarts the count at step 1."""
    vol, tag1 = _volume(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    data = (vol / PENDING_NAME).read_bytes()
    vid = load_sealed(vol, KEY)[0].volume_id
    old = f"{tag1} {pending_base_mac(KEY.raw, vid, data, tag1).hex()}\n"
    (vol / PENDING_BASE_NAME).write_text(old, "ascii")
    before = _snapshot(vol)
    with pytest.raises(RollbackError, match="a base record without a pending tag"):
        seal_volume(vol, KEY, tag1, expected_pending="0" * 64)
    assert _snapshot(vol) == before
    s = add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_tag=tag1)  # base shown by v1
    assert s.step == 1
    (vol / PENDING_NAME).write_bytes(data)
    (vol / PENDING_BASE_NAME).write_text(old, "ascii")
    tag2 = seal_volume(vol, KEY, tag1)
    assert sorted(load_sealed(vol, KEY, tag2)[0].by_path()) == ["a.txt", "b.txt"]


# --- crash safety -------------------------------------------------------------------------------


def _killed_step(vol: Path, tmp: Path, expected: str, after: str) -> int:
    """Run an add (expecting ``expected``) in a child process that SIGKILLs itself right after
    its write of ``after`` (a name in the volume directory); return its exit status."""
    src = _src(tmp, "killed.txt", b"k")
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from confide.volume import VolumeKey
        from confide.volume import store
        real = store.write_atomic
        def write_atomic(path, data, mode=0o644):
            real(path, data, mode)
            if path.name == {after!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        store.write_atomic = write_atomic
        store.add_sources(Path({str(vol)!r}), VolumeKey(bytes(range(32))), [Path({str(src)!r})],
                          expected_pending={expected!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], env=env, check=False, timeout=120).returncode


def test_a_kill_between_the_record_and_the_pending_manifest_keeps_the_previous_state(
    tmp_path: Path,
) -> None:
    """The record (listing the new state and the previous one) is written first: killed before
    the pending manifest, the previous state is what is staged, and its pending tag (the one the
    owner holds, since the killed add printed nothing) still authenticates."""
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    pending = (vol / PENDING_NAME).read_bytes()
    assert _killed_step(vol, tmp_path, s1.pending_tag, PENDING_BASE_NAME) == -signal.SIGKILL
    assert (vol / PENDING_NAME).read_bytes() == pending  # not replaced
    record = (vol / PENDING_BASE_NAME).read_text("ascii").split("\n")
    assert record[1].split(" ")[1] == "2" and record[2] == f"{tag1} 1 {s1.pending_tag}"  # replaced first
    s2 = add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_pending=s1.pending_tag)
    assert s2.step == 2
    tag2 = seal_volume(vol, KEY, tag1, expected_pending=s2.pending_tag)
    assert sorted(load_sealed(vol, KEY, tag2)[0].by_path()) == ["a.txt", "b.txt", "c.txt"]


def test_a_kill_after_the_pending_manifest_is_refused_clearly(tmp_path: Path) -> None:
    """Killed after both writes but before it printed the new pending tag: the owner holds the
    previous one, and the staged state is the newer step: refused, naming both, nothing
    changed. Without the option the step is sealed as before."""
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    assert _killed_step(vol, tmp_path, s1.pending_tag, PENDING_NAME) == -signal.SIGKILL
    before = _snapshot(vol)
    with pytest.raises(RollbackError, match=rf"got [0-9a-f]{{64}} \(step 2\), expected {s1.pending_tag}"):
        seal_volume(vol, KEY, tag1, expected_pending=s1.pending_tag)
    assert _snapshot(vol) == before
    tag2 = seal_volume(vol, KEY, tag1)
    assert sorted(load_sealed(vol, KEY, tag2)[0].by_path()) == ["a.txt", "b.txt", "killed.txt"]


def test_a_kill_at_the_first_step_leaves_nothing_staged(tmp_path: Path) -> None:
    """At step 1 there was no pending manifest: a record left alone is ignored."""
    vol, tag1 = _volume(tmp_path)
    assert _killed_step(vol, tmp_path, "none", PENDING_BASE_NAME) == -signal.SIGKILL
    assert (vol / PENDING_BASE_NAME).exists() and not (vol / PENDING_NAME).exists()
    assert seal_volume(vol, KEY, tag1, expected_pending="none") == tag1
    s = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")], expected_pending="none")
    assert s.step == 1


def test_a_seal_interrupted_after_the_manifest_counts_as_done(tmp_path: Path) -> None:
    """A seal killed between replacing MANIFEST and removing MANIFEST.pending: run again with
    the same pending tag, it finds the change sealed and prints the tag (not a rollback)."""
    vol, tag1 = _volume(tmp_path)
    s1 = add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    staged = _staged(vol)
    tag2 = seal_volume(vol, KEY, tag1, expected_pending=s1.pending_tag)
    _put_back(vol, staged)  # as left by the interrupted seal
    assert seal_volume(vol, KEY, expected_pending=s1.pending_tag) == tag2
    assert not (vol / PENDING_NAME).exists()
    _put_back(vol, staged)
    with pytest.raises(RollbackError, match="only an already sealed"):
        seal_volume(vol, KEY, expected_pending="1" * 64)


# --- the CLI, and the staging state file --------------------------------------------------------


def _run(args: list[str]) -> tuple[int, str, str]:
    r = CliRunner().invoke(volume, args)
    return r.exit_code, r.stdout, r.stderr


def test_the_cli_prints_and_checks_pending_tags(tmp_path: Path) -> None:
    vol, tag1 = _volume(tmp_path)
    key = ["--key", str(_keyfile(tmp_path))]
    code, out, err = _run(["add", str(vol), str(_src(tmp_path, "b.txt", b"b")), *key, "--expect-tag", tag1])
    assert code == 0, err
    summary, line, end = out.split("\n")
    assert summary.startswith("added 1 entries") and end == ""
    assert line.startswith("pending: ") and len(line.split(" ")[1]) == 64
    p1 = line.split(" ")[1]
    kept = _staged(vol)
    code, out, err = _run(["rm", str(vol), "a.txt", *key, "--expect-pending", p1])
    assert code == 0, err
    p2 = out.split("\n")[1].removeprefix("pending: ")
    assert out.startswith("removed 1 entries (1 files); not sealed yet\n") and p2 != p1
    _put_back(vol, kept)
    before = _snapshot(vol)
    for args in (
        ["add", str(vol), str(_src(tmp_path, "c.txt", b"c"))],
        ["rm", str(vol), "b.txt"],
        ["seal", str(vol)],
    ):
        code, out, err = _run([*args, *key, "--expect-pending", p2])
        assert code == RollbackError.exit_code, err
        assert f"got {p1} (step 1), expected {p2}" in err and out == ""
    assert _snapshot(vol) == before
    code, _out, err = _run(["seal", str(vol), *key, "--expect-pending", "nope"])
    assert code == UsageError.exit_code and "64 hex digits" in err
    code, out, err = _run(["seal", str(vol), *key, "--expect-pending", p1])
    assert code == 0 and out == load_sealed(vol, KEY)[1] + "\n", err


def test_the_state_file_remembers_the_last_pending_tag(tmp_path: Path) -> None:
    vol, tag1 = _volume(tmp_path)
    key = ["--key", str(_keyfile(tmp_path))]
    state = tmp_path / "owner" / "staging.json"
    state.parent.mkdir()
    state_opt = ["--state", str(state)]
    assert _run(["add", str(vol), str(_src(tmp_path, "b.txt", b"b")), *key, *state_opt])[0] == 0
    kept = _staged(vol)
    code, out, _err = _run(["add", str(vol), str(_src(tmp_path, "c.txt", b"c")), *key, *state_opt])
    p2 = out.split("\n")[1].removeprefix("pending: ")
    assert code == 0 and json.loads(state.read_text()) == {"version": 1, "volumes": {str(vol): p2}}
    assert state.stat().st_mode & 0o777 == 0o600
    _put_back(vol, kept)
    before, remembered = _snapshot(vol), state.read_bytes()
    code, _out, err = _run(["seal", str(vol), *key, *state_opt])
    assert code == RollbackError.exit_code and f"expected {p2}" in err
    assert f"what --state {str(state)!r} remembers" in err
    assert _snapshot(vol) == before and state.read_bytes() == remembered  # a refusal changes neither
    (vol / PENDING_NAME).unlink()
    (vol / PENDING_BASE_NAME).unlink()
    # an explicit --expect-pending overrides what the file remembers
    code, out, err = _run(["add", str(vol), str(_src(tmp_path, "d.txt", b"d")), *key, *state_opt,
                           "--expect-pending", "none"])  # fmt: skip
    assert code == 0, err
    code, out, err = _run(["seal", str(vol), *key, *state_opt, "--expect-tag", tag1])
    assert code == 0, err
    assert json.loads(state.read_text())["volumes"] == {str(vol): "none"}
    _put_back(vol, kept)  # staged on tag1 long ago: and the file expects nothing staged
    code, _out, err = _run(["add", str(vol), str(_src(tmp_path, "e.txt", b"e")), *key, *state_opt])
    assert code == RollbackError.exit_code and "expected none" in err


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[]",
        b'{"version": 2, "volumes": {}}',
        b'{"version": 1, "volumes": {}, "extra": 1}',
        b'{"version": 1, "volumes": {"relative/dir": "none"}}',
        b'{"version": 1, "volumes": {"/v": "NONE"}}',
        b'{"version": 1, "volumes": {"/v": "abc"}}',
        b'{"version": 1, "volumes": {"/v": "none", "/v": "none"}}',
        b'{"version": true, "volumes": {}}',
    ],
)
def test_a_malformed_state_file_is_refused_and_nothing_changes(tmp_path: Path, content: bytes) -> None:
    vol, _tag1 = _volume(tmp_path)
    state = tmp_path / "staging.json"
    state.write_bytes(content)
    before = _snapshot(vol)
    code, _out, err = _run(
        ["add", str(vol), str(_src(tmp_path, "b.txt", b"b")), "--key", str(_keyfile(tmp_path)), "--state",
         str(state)]
    )  # fmt: skip
    assert code == ParseError.exit_code, err
    assert "staging state file" in err and len(err.strip().split("\n")) == 1
    assert _snapshot(vol) == before and state.read_bytes() == content


def test_a_state_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    vol, _tag1 = _volume(tmp_path)
    state = tmp_path / "staging.json"
    os.mkfifo(state)
    code, _out, err = _run(["seal", str(vol), "--key", str(_keyfile(tmp_path)), "--state", str(state)])
    assert code == 50 and "not a regular file" in err
    assert load_sealed(vol, KEY)[1] == _tag1


def test_commands_sharing_a_state_file_keep_each_others_updates(tmp_path: Path) -> None:
    """Eight `confide volume add --state FILE` processes at once, on eight volumes: the file is
    read-modify-written under FILE.lock, so every volume's pending tag is remembered."""
    keyfile = _keyfile(tmp_path)
    state = tmp_path / "staging.json"
    vols = []
    for i in range(8):
        vol = tmp_path / f"vol{i}"
        create_volume(vol, KEY, chunk_size=CS)
        vols.append(vol)
    src = _src(tmp_path, "b.txt", b"b")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    base = [sys.executable, "-m", "confide", "volume", "add"]
    procs = [
        subprocess.Popen(
            [*base, str(vol), str(src), "--key", str(keyfile), "--state", str(state)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for vol in vols
    ]
    printed = {}
    for vol, proc in zip(vols, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        printed[str(vol)] = out.split("\n")[1].removeprefix("pending: ")
    assert json.loads(state.read_text())["volumes"] == printed


@pytest.mark.parametrize("how", ["other owner", "group-writable", "world-writable"])
def test_a_state_file_another_user_can_write_is_refused(tmp_path: Path, how: str) -> None:
    """Another local user who can write the state file (made or replaced by them in a shared
    directory) could drop the expectation for a volume (its first use again): refused, exit 50,
    nothing changed."""
    vol, _tag1 = _volume(tmp_path)
    key = ["--key", str(_keyfile(tmp_path))]
    state = tmp_path / "staging.json"
    assert _run(["add", str(vol), str(_src(tmp_path, "b.txt", b"b")), *key, "--state", str(state)])[0] == 0
    if how == "other owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file away")
        os.chown(state, 65534, 65534)
    else:
        state.chmod(0o620 if how == "group-writable" else 0o602)
    before, remembered = _snapshot(vol), state.read_bytes()
    code, out, err = _run(["seal", str(vol), *key, "--state", str(state)])
    assert code == 50 and out == "", err
    assert "staging state file" in err and (
        "owned by uid 65534" in err or "writable by group or others" in err
    )
    assert _snapshot(vol) == before and state.read_bytes() == remembered
