"""Every effvit-* command in the README parses with its CLI, and every CLI has --help with examples.

The commands themselves run in `make demo` (digits) or need ImageNet and a GPU; what a test can
prove here is that the README never drifts from the CLIs' real options.
"""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CLIS = ("data", "train", "export", "bench", "demo")


def parser_of(command: str):
    module = importlib.import_module(f"effvit_deploy.cli.{command}")
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args
    return module.parse_args


def readme_commands() -> list[list[str]]:
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    commands = []
    for line in text.splitlines():
        if not line.startswith("    "):  # commands live in indented code blocks
            continue
        line = line.strip().replace("$(which effvit-train)", "effvit-train").replace(".venv/bin/", "")
        match = re.search(r"(?:^|\s)(effvit-[a-z]+ .*)$", line)
        if match:
            commands.append(shlex.split(match.group(1).split("#")[0].replace("runs/imagenet100_vit_s16-*", "runs/x")))
    return commands


def test_readme_has_the_commands_of_every_stage():
    seen = {argv[0] for argv in readme_commands()}
    assert seen == {f"effvit-{c}" for c in CLIS}


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    parse = parser_of(argv[0].removeprefix("effvit-"))
    parse(argv[1:])


@pytest.mark.parametrize("command", CLIS)
def test_every_cli_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser_of(command)(["--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out.lower()
