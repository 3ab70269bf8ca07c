"""Tests of the ImageNet packer (zflight.data.pack) and the data module that reads packs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from zflight.cli.pack import main as pack_main


from tests.imagenet_folder import SIZE

# zflight.data.pack is the module (the package does not export the function, which would hide it).
packmod = importlib.import_module("zflight.data.pack")


def test_cli_packs_with_worker_processes_and_verifies(src, packed, tmp_path, capsys):
    dst = tmp_path / "zf"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "zflight",
        "pack",
        "--src",
        str(src),
        "--dst",
        str(dst),
        "--size",
        str(SIZE),
        "--workers",
        "2",
        "--chunk-size",
        "5",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        packmod.read_manifest(dst)["splits"]["train"]["sha256"]
        == packmod.read_manifest(packed)["splits"]["train"]["sha256"]
    )
    assert pack_main(["--dst", str(dst), "--verify", "--workers", "0"])["splits"]["val"]["count"] == 9
    assert "24 train + 9 val images" in capsys.readouterr().out


def test_cli_errors_name_the_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pack_main(["--src", str(tmp_path / "nothing"), "--dst", str(tmp_path / "zf"), "--no-progress"])
    assert exit_info.value.code == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
