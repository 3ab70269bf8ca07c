"""``zflight.cli._common``: the plumbing every analysis subcommand shares (one-line errors naming
the option, no abbreviations, the output folder written all at once)."""

from __future__ import annotations

import json
import math

import pytest

from zflight.cli import main
from zflight.cli._common import AnalysisError, output_dir, subcommand_parser, write_json

QUICKSTART = "configs/quickstart.yaml"


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(20)


# Per subcommand: a missing file, an unknown layer, a bad channel/number; each names its option.
BAD_INPUTS = [
    ("occlusion", ["--ckpt_path", "{missing}"], "--ckpt_path"),
    ("occlusion", ["--layer", "conv9"], "--layer"),
    ("occlusion", ["--size", "-3"], "--size"),
    ("occlusion", ["--indices", "999"], "--indices"),
    ("occlusion", ["--stride", "x"], "--stride"),
    ("invariance", ["--layers", "conv9"], "--layers"),
    ("invariance", ["--indices", "999"], "--indices"),
    ("compare", ["--ckpt_path_b", "{missing}"], "--ckpt_path_b"),
    ("compare", ["--maps", "0"], "--maps"),
    ("correspondence", ["--num_images", "0"], "--num_images"),
    ("correspondence", ["--classes", "triangle", "--subset_size", "2", "--layers", "conv9"], "--layers"),
    ("visualize", ["--config", QUICKSTART, "--layers", "conv9"], "--layers"),
    ("visualize", ["--config", QUICKSTART, "--k", "0"], "--k"),
    ("visualize", ["--config", "{missing}"], "--config"),
]


@pytest.mark.parametrize("command, extra, option", BAD_INPUTS, ids=[f"{c} {' '.join(e)}" for c, e, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_naming_the_option_and_writes_nothing(
    command, extra, option, tiny_ckpt, tmp_path, capsys
):
    out = tmp_path / "out"
    extra = [a.replace("{missing}", str(tmp_path / "missing.ckpt")) for a in extra]
    args = [command, "--ckpt_path", str(tiny_ckpt), "--out", str(out), *extra]
    if command == "compare" and "--ckpt_path_b" not in extra:
        args += ["--ckpt_path_b", str(tiny_ckpt)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"python -m zflight {command}: error: ") and option in err[0]
    assert list(tmp_path.iterdir()) == []  # no --out, no temporary folder left beside it


def test_options_are_never_abbreviated_and_a_typo_gets_its_close_match(capsys):
    parser = subcommand_parser("occlusion", "test")
    parser.add_argument("--layers")
    parser.add_argument("--stride")
    with pytest.raises(SystemExit):
        parser.parse_args(["--layer", "conv5"])  # argparse would take it for --layers
    assert "unrecognized arguments: --layer conv5 (did you mean --layers?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--strid", "3"])
    assert "(did you mean --stride?)" in capsys.readouterr().err


def test_output_folder_is_whole_or_absent(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with output_dir(out) as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with output_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(AnalysisError, match="--overwrite"):
        with output_dir(out):
            pass
    with output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(AnalysisError, match="not a folder"):
        with output_dir(tmp_path / "file", overwrite=True):
            pass


def test_write_json_turns_non_finite_into_null(tmp_path):
    write_json({"a": math.nan, "b": [1.0, math.inf]}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None]}
