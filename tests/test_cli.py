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
    assert cli.main(["nope"]) == 2  # argparse's usage-error status, with the usage on stderr
    assert "nope" in capsys.readouterr().err


def test_user_error_message_is_flattened():
    assert str(UserError("a\n  b\tc")) == "a b c"


def test_config_validation_error_is_one_line(toy_commands, capsys):
    assert cli.main(["echo", "--word", ""]) == 2
    assert capsys.readouterr().err == "avatar3d echo: error: word must not be empty\n"


def test_sigterm_unwinds_so_atomic_writes_clean_up(tmp_path):
    """A killed command (SIGTERM) leaves neither its output nor its temp file behind."""
    import subprocess
    import textwrap
    import time

    script = textwrap.dedent(
        f"""
        import dataclasses, sys, time, types
        from avatar3d import cli, fsutil

        @dataclasses.dataclass(frozen=True)
        class C:
            x: int = 0

        def run(config):
            with fsutil.atomic_file(__import__("pathlib").Path({str(tmp_path / "out.txt")!r}), "w") as f:
                f.write("partial")
                print("writing", flush=True)
                time.sleep(30)

        mod = types.ModuleType("slow")
        mod.C, mod.run = C, run
        sys.modules["slow"] = mod
        cli.COMMANDS = {{"slow": ("slow", "C", "run")}}
        sys.exit(cli.main(["slow"]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.terminate()
    start = time.time()
    assert proc.wait(timeout=20) == 130
    assert time.time() - start < 20
    assert list(tmp_path.iterdir()) == []
