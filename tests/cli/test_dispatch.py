import sys

import pytest

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
