"""Every dfbench command line quoted in the README, the docs and the suites' comments parses with the real
parser (so a flag that was renamed or a positional written as a flag cannot stay in the docs), and those
that need no weights and no dataset run and exit 0."""

import re
import shlex
from pathlib import Path

import pytest

from dfbench.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "configs").rglob("*.yaml"))]
#: backbones whose weights the command loads (``activations`` needs none: its catalog is weightless)
WEIGHTLESS_COMMANDS = {"list", "activations"}
SYNOPSIS = re.compile(r"[\[\]|…]|\.\.\.")          # metasyntax of a usage line, not a command
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_.]*(\.[a-z]+)?$|^[A-Z]=[A-Z]+$")   # B, DIR, FILE.yaml, M=X


def quoted_commands() -> list[tuple[str, str]]:
    """(where, command line) of every ``dfbench …`` line in a fenced code block, an inline code span or a
    suite comment; backslash continuations joined, ``&&`` chains split, comments and redirections dropped."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        if path.suffix == ".md":
            chunks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)    # not ```text synopses
        else:                                   # a suite's comments quote commands indented: "#   dfbench …"
            chunks = ["\n".join(line.lstrip("#").strip() for line in text.splitlines()
                                if re.match(r"#\s{2,}dfbench ", line))]
        lines = []
        for chunk in chunks:
            lines += chunk.replace("\\\n", " ").splitlines()
        if path.suffix == ".md":             # inline code spans with arguments (not a bare `dfbench score`)
            spans = re.findall(r"`(dfbench [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
            lines += [" ".join(span.split()) for span in spans if len(span.split()) > 2]
        for line in lines:
            for part in line.split("&&"):
                command = part.split(" #")[0].split(" > ")[0].strip()
                if command.startswith("dfbench "):
                    found.append((path.name, command))
    return found


COMMANDS = quoted_commands()


def argv_of(command: str) -> list[str]:
    """The arguments after ``dfbench``, placeholders (``B``, ``DIR``, ``R``) replaced by a value that parses."""
    return ["64" if PLACEHOLDER.match(token) else token for token in shlex.split(command)[1:]]


def test_the_docs_quote_commands():
    assert len(COMMANDS) > 30
    assert any("activations" in command for _, command in COMMANDS)


@pytest.mark.parametrize("where,command", [item for item in COMMANDS if not SYNOPSIS.search(item[1])],
                         ids=lambda value: value[:70])
def test_every_quoted_command_parses(where, command):
    try:
        build_parser().parse_args(argv_of(command))
    except SystemExit as exited:
        pytest.fail(f"{where}: `{command}` does not parse (exit {exited.code})")


def runnable(command: str) -> bool:
    """No weights (a ``tiny-*`` backbone, or a weightless command) and no dataset (``mini`` or none)."""
    argv = argv_of(command)
    if argv != shlex.split(command)[1:]:             # placeholders: a pattern, not a command to run
        return False
    if argv[0] in WEIGHTLESS_COMMANDS:
        return True
    if argv[0] != "run":
        return False
    backbone = argv[argv.index("--backbone") + 1]
    data = argv[argv.index("--data-root") + 1] if "--data-root" in argv else "mini"
    return all(part.startswith("tiny-") for part in backbone.split("+")) and data == "mini"


RUNNABLE = sorted({command for _, command in COMMANDS if not SYNOPSIS.search(command) and runnable(command)})


def test_some_quoted_commands_run_here():
    assert sum(command.startswith("dfbench run") for command in RUNNABLE) >= 3
    assert sum(command.startswith("dfbench activations") for command in RUNNABLE) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=lambda value: value[:70])
def test_quoted_commands_that_need_no_weights_or_data_run(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path.parent / "docs_home"))
    argv = argv_of(command)
    if argv[0] == "run":
        argv += ["--no-progress", "--no-figures"]
    assert main(argv) == 0, capsys.readouterr().err
