"""Every ``confide`` command the documentation shows names commands and options that exist.

README.md and docs/*.md show ``confide ...`` command lines in code blocks (``sh``, ``console``,
``bash`` and unlabelled synopsis blocks, ``$ `` prompts included) and in inline code spans, and
name options in spans such as ``cas serve --witness-quorum N``. Each is walked down the click
command tree (the lazily loaded subsystems included): every subcommand named must exist, every
``--option`` (and ``-x``) must be one of the command it reaches, and a literal value given to a
``click.Choice`` option (``--tee sim``, ``--mode auto|fuse|tmpfs``) must be one of its choices.
Nothing is executed; a renamed or removed option that the docs still show fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from confide.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Code blocks whose lines may be shell commands; yaml, json and python blocks are not.
_SHELL_BLOCKS = {"", "sh", "bash", "console", "shell", "text"}
# Groups whose name may start an inline span without the ``confide`` prefix
# (``cas serve --witness-quorum N``, ``ledger witness serve``).
_BARE_GROUPS = {"cas", "evidence", "identity", "ledger", "policy", "sim", "volume"}
_OPTION = re.compile(r"^(--[a-z0-9][a-z0-9-]*|-[a-zA-Z])$")
_SUBCOMMAND = re.compile(r"^[a-z][a-z0-9-]*$")
_CHOICE_VALUE = re.compile(r"^[a-z0-9][a-z0-9.:_-]*$")


@dataclass(frozen=True)
class DocCommand:
    where: str  # FILE:LINE
    text: str  # the command line, continuation lines joined, `confide` first


def _fenced_commands(path: Path) -> list[DocCommand]:
    out: list[DocCommand] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    language: str | None = None
    pending: tuple[int, str] | None = None  # a command whose line ended with a backslash

    def command_in(line: str) -> str | None:
        match = re.search(r"(?:^|\$\(|\s)(?:\.venv/bin/)?(confide(?:\s.*)?)$", line.strip())
        if match is None:
            return None
        before = line.strip()[: match.start(1)]
        # `confide` must start the line, follow a prompt, a `$(` or an environment assignment,
        # not stand inside another command's arguments (`kubectl exec confide-cas-0`).
        if before.strip() and not re.fullmatch(
            r"(\$\s*|.*\$\(\s*(?:\.venv/bin/)?|(?:[A-Z_]+=\S*\s+)+|flock\s.*\s)", before
        ):
            return None
        return match.group(1)

    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            language = fence.group(1) if language is None else None
            pending = None
            continue
        if language is None or language not in _SHELL_BLOCKS:
            continue
        if pending is not None:
            start, text = pending
            continuation = line.strip()
            pending = (start, text + " " + continuation.rstrip("\\"))
            if not continuation.endswith("\\"):
                out.append(DocCommand(f"{path.name}:{start}", pending[1]))
                pending = None
            continue
        text = command_in(line)
        if text is None:
            # A synopsis continued on an indented line without a backslash (docs/dcap.md).
            if out and line.startswith("   ") and line.strip().startswith("["):
                last = out[-1]
                out[-1] = DocCommand(last.where, last.text + " " + line.strip())
            continue
        if text.rstrip().endswith("\\"):
            pending = (number, text.rstrip().rstrip("\\"))
        else:
            out.append(DocCommand(f"{path.name}:{number}", text))
    return out


def _inline_commands(path: Path) -> list[DocCommand]:
    out: list[DocCommand] = []
    text = path.read_text(encoding="utf-8")
    # Blank the fenced blocks (keeping their line count) so their backticks are not spans.
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        if "\n\n" in match.group(1):
            continue  # not a span: an unpaired backtick
        span = " ".join(match.group(1).replace("\\|", "|").split())  # a span may wrap
        line = text.count("\n", 0, match.start()) + 1
        if re.match(r"(\.venv/bin/)?confide(\s|$)", span):
            out.append(DocCommand(f"{path.name}:{line}", span.removeprefix(".venv/bin/")))
        elif _names_a_subcommand(span):
            out.append(DocCommand(f"{path.name}:{line}", "confide " + span))
    return out


def _names_a_subcommand(span: str) -> bool:
    """``cas serve --witness-quorum N`` is a command; ``evidence obtained: not stated`` is not."""
    words = span.split()
    if len(words) < 2 or words[0] not in _BARE_GROUPS:
        return False
    group = cli.get_command(click.Context(cli), words[0])
    assert isinstance(group, click.Group)
    return all(group.get_command(click.Context(group), w) is not None for w in re.split(r"[|/]", words[1]))


def doc_commands(paths: list[Path] | None = None) -> list[DocCommand]:
    paths = DOCS if paths is None else paths
    return [c for path in paths for c in (*_fenced_commands(path), *_inline_commands(path))]


def _tokens(text: str) -> list[str]:
    text = text.replace("\\|", "|")
    # A comment ends the command; so do a pipe into another program, `;`, `&&` and `&`.
    text = re.split(r"\s#\s|\s#$|\s\|\s|;|&&|\s&(\s|$)|\)\s*$|\s>\s", text + " ")[0]
    tokens: list[str] = []
    for raw in text.split():
        word = raw.strip("[]()\"',")
        if word.endswith("..."):
            word = word[: -len("...")]
        if word:
            tokens.append(word)
    return tokens


def _option_map(command: click.Command, ctx: click.Context) -> dict[str, click.Parameter]:
    options: dict[str, click.Parameter] = {}
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                options[name] = param
    return options


def problems(command: DocCommand) -> list[str]:
    """What in one documented command line does not exist in the click command tree."""
    if " / " in command.text:
        # `confide ledger verify / serve / witness serve`: siblings under the first one's group.
        first, *siblings = command.text.split(" / ")
        group = first.rsplit(" ", 1)[0]
        pieces = [first, *(f"{group} {sibling}" for sibling in siblings)]
        return [p for piece in pieces for p in problems(DocCommand(command.where, piece))]
    found: list[str] = []
    tokens = _tokens(command.text)
    assert tokens and tokens[0] == "confide", command
    path: list[str] = ["confide"]
    current: click.Command = cli
    ctx = click.Context(cli, info_name="confide")
    index = 1
    # Walk down the groups: `cas successor board propose`, `ledger verify|history|accesses`.
    while isinstance(current, click.Group) and index < len(tokens):
        word = tokens[index].rstrip(":")
        alternatives = [w for w in re.split(r"[|/]", word) if w]
        if not alternatives or not all(_SUBCOMMAND.match(w) for w in alternatives):
            break
        if word.isupper():
            break
        resolved = [current.get_command(ctx, w) for w in alternatives]
        unknown = [w for w, c in zip(alternatives, resolved, strict=True) if c is None]
        if unknown:
            found.append(f"{command.where}: `{' '.join(path)}` has no subcommand {', '.join(unknown)}")
            return found
        path.append(alternatives[0])
        index += 1
        if len(alternatives) > 1:
            # Each alternative's options would differ; the names were what could be checked.
            return found
        current = resolved[0]  # type: ignore[assignment]
        ctx = click.Context(current, info_name=alternatives[0], parent=ctx, **current.context_settings)
    options = _option_map(current, ctx)
    # `confide sim measure python3 -u app.py`: after the first argument, the rest is the workload's.
    options_end = not ctx.allow_interspersed_args
    while index < len(tokens):
        word = tokens[index]
        index += 1
        if word == "--":
            break  # what follows is the workload's command line
        names = [w for w in word.split("/") if w] if word.startswith("--") else [word]
        names = [n for part in names for n in part.split("|")] if word.startswith("-") else names
        candidates = [n.split("=", 1)[0] for n in names]
        if not all(_OPTION.match(n) for n in candidates):
            if options_end:
                break
            continue
        for name in candidates:
            if name in {"-h", "--help"}:
                continue
            param = options.get(name)
            if param is None:
                found.append(f"{command.where}: `{' '.join(path)}` has no option {name}")
                continue
            takes_value = isinstance(param, click.Option) and not (param.is_flag or param.count)
            if takes_value and "=" not in names[-1] and index < len(tokens):
                value = tokens[index]
                index += 1
                if isinstance(param.type, click.Choice):
                    for choice in value.split("|"):
                        if _CHOICE_VALUE.match(choice) and choice not in param.type.choices:
                            found.append(
                                f"{command.where}: `{' '.join(path)} {name}` has no choice {choice}"
                                f" ({'|'.join(map(str, param.type.choices))})"
                            )
    return found


# Paths the docs name that are not this repository's: another project's files, a kubectl object.
_FOREIGN_PATHS = {
    "docs/attestation_process.md",  # aws-nitro-enclaves-nsm-api's (docs/nitro.md)
    "src/api/mod.rs",  # aws-nitro-enclaves-nsm-api's (docs/quote-providers.md)
    "deploy/confide-witness",  # `kubectl logs deploy/confide-witness` (docs/deploy.md)
}


def test_every_repository_path_the_docs_name_exists() -> None:
    """`examples/sdk/async_audit.py`, `tests/assets/sgx/...`, `bench/verify_dcap.py`,
    `deploy/kubernetes/overlays/sqlite`: what a command is given must be there."""
    missing = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        pattern = r"(?<![\w./-])((?:examples|tests|bench|deploy|src|docs)/[\w./-]*[\w/])"
        for match in re.finditer(pattern, text):
            name = match.group(1).rstrip("/")
            if name not in _FOREIGN_PATHS and not (ROOT / name).exists():
                missing.append(f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}: {name}")
    assert missing == [], "\n".join(missing)


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = {
        (path.name, target)
        for path in DOCS
        for target in re.findall(r"(?:^|`)make ([a-z][a-z-]*)", path.read_text(encoding="utf-8"), re.M)
    }
    assert {("README.md", "demo"), ("README.md", "test")} <= named
    assert sorted(n for n in named if n[1] not in targets) == []


def test_the_docs_show_many_commands() -> None:
    commands = doc_commands()
    # The extraction itself: a parser that found nothing would pass everything.
    assert len(commands) > 300
    texts = {c.text for c in commands}
    assert any(t.startswith("confide sim init --dir DIR ") for t in texts)
    assert any(t.startswith("confide evidence verify QUOTE") and "--event-log" in t for t in texts)
    assert any(t.startswith("confide cas serve --witness-quorum") for t in texts)


def test_every_documented_command_and_option_exists() -> None:
    found = [p for command in doc_commands() for p in problems(command)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("confide evidence verify FILE --no-such-option", "has no option --no-such-option"),
        ("confide cas serve --dev --witnes-quorum 2", "has no option --witnes-quorum"),
        ("confide cas successor frobnicate", "has no subcommand frobnicate"),
        ("confide ledger verify|histroy", "has no subcommand histroy"),
        ("confide run --tee sgx-sim -- /bin/true", "has no choice sgx-sim"),
        ("confide volume mount D M --mode auto|fuse|ramfs", "has no choice ramfs"),
        ("confide sim quote --dir D --report-dat 00 -- /bin/true", "has no option --report-dat"),
    ],
)
def test_a_wrong_command_is_found(text: str, expected: str) -> None:
    found = problems(DocCommand("test:1", text))
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    "text",
    [
        "confide sim measure python3 -u app.py",  # the workload's options are not confide's
        "confide run --config-id P/S --tee sim -- /bin/app --anything",
        "confide cas successor board propose --board FILE --expires 1d --identity FILE",
        "confide ledger serve ... --tls-cert c.pem --tls-key k.pem",
        "confide volume rm DIR PATH... [--key FILE] [-r|--recursive] [--expect-tag HEX]",
    ],
)
def test_a_right_command_passes(text: str) -> None:
    assert problems(DocCommand("test:1", text)) == []


def test_a_wrong_option_in_a_doc_file_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "Run `confide cas attest --measurment HEX` first.\n\n"
        "```sh\n$ confide policy apply p.yaml \\\n    --identity a.id --dryrun\n```\n",
        encoding="utf-8",
    )
    found = [p for command in doc_commands([doc]) for p in problems(command)]
    assert found == [
        "page.md:4: `confide policy apply` has no option --dryrun",
        "page.md:1: `confide cas attest` has no option --measurment",
    ]
