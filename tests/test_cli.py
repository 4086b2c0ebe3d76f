"""The CLI dispatcher: subcommand parsing, one-line errors and exit codes."""
from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from avatar3d import cli
from avatar3d.errors import UserError


@dataclasses.dataclass(frozen=True)
class EchoConfig:
    """A toy stage."""

    word: str = "hi"
    """What to say; 'fail' raises a UserError."""

    def __post_init__(self):
        if self.word == "":
            raise UserError("word must not be empty")


def run_echo(config: EchoConfig) -> None:
    if config.word == "fail":
        raise UserError("the word was\nfail")
    print(f"echo {config.word}")


@pytest.fixture
def toy_commands(monkeypatch):
    module = types.ModuleType("toy_stage")
    module.EchoConfig = EchoConfig
    module.run_echo = run_echo
    monkeypatch.setitem(sys.modules, "toy_stage", module)
    monkeypatch.setattr(cli, "COMMANDS", {"echo": ("toy_stage", "EchoConfig", "run_echo")})


def test_subcommand_runs_with_its_config(toy_commands, capsys):
    assert cli.main(["echo", "--word", "hello"]) == 0
    assert capsys.readouterr().out.strip() == "echo hello"


def test_user_error_is_one_line_and_exit_2(toy_commands, capsys):
    assert cli.main(["echo", "--word", "fail"]) == 2
    err = capsys.readouterr().err
    assert err == "avatar3d echo: error: the word was fail\n"


def test_unknown_subcommand_is_a_usage_error(toy_commands, capsys):
    assert cli.main(["nope"]) != 0


def test_user_error_message_is_flattened():
    assert str(UserError("a\n  b\tc")) == "a b c"


def test_config_validation_error_is_one_line(toy_commands, capsys):
    assert cli.main(["echo", "--word", ""]) == 2
    assert capsys.readouterr().err == "avatar3d echo: error: word must not be empty\n"
