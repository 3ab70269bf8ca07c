"""python -m zflight: the subcommand list, unknown subcommands."""

import subprocess
import sys

import pytest

from zflight.cli import COMMANDS
from zflight.cli import main as _main


def main(args: list[str]):
    # LightningCLI warns when it is given args while sys.argv holds pytest's own arguments.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["zflight"])
        return _main(args)


def test_unknown_subcommand_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'fitt'" in err and "fit" in err and "occlusion" in err and "pack" in err


def test_help_lists_every_subcommand_with_a_description_under_the_program_name():
    proc = subprocess.run([sys.executable, "-m", "zflight", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m zflight <subcommand>")
    for name, (_, text) in COMMANDS.items():
        assert f"  {name} " in proc.stdout and text in proc.stdout
    assert {"fit", "validate", "test", "predict", "visualize", "occlusion", "invariance", "compare",
            "correspondence", "pack"} <= set(COMMANDS)


def test_unknown_subcommand_suggests_the_close_one(capsys):
    with pytest.raises(SystemExit):
        main(["occlusoin"])
    assert "did you mean 'occlusion'?" in capsys.readouterr().err
