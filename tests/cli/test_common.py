"""``zflight.cli._common``: the output folder every subcommand writes, all at once."""

from __future__ import annotations

import json
import math

import pytest

from zflight.cli._common import AnalysisError, output_dir, write_json


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
