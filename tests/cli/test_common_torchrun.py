"""torchrun -m zflight visualize: the CLI joins torchrun's process group, each rank takes its
shard of the images, rank 0 alone writes --out, and the outputs equal one process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from zflight.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd, procs):
    # ZFLIGHT_DIST_BACKEND=gloo: the group is gloo even on a machine with a GPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "ZFLIGHT_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "zflight", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny(tiny_ckpt_factory):
    return tiny_ckpt_factory(val_size=30)


def test_torchrun_visualize_writes_once_and_equals_one_process(tiny, tmp_path):
    common = ["visualize", "--ckpt_path", str(tiny), "--layers", "conv2", "conv5", "--maps", "3", "--k", "4",
              "--tile", "16", "--batch_size", "7"]
    main([*common, "--out", str(tmp_path / "one")])  # one process: in this one
    two = _run([*common, "--out", str(tmp_path / "two")], tmp_path, procs=2)
    one_doc = json.loads((tmp_path / "one" / "top_activations.json").read_text())
    two_doc = json.loads((tmp_path / "two" / "top_activations.json").read_text())
    assert one_doc["layers"] == two_doc["layers"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert (tmp_path / "one" / "top4_conv5.png").read_bytes() == (tmp_path / "two" / "top4_conv5.png").read_bytes()
    assert two.stdout.count("wrote 2 panels") == 2  # both ranks ran; only rank 0's folder exists
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_torchrun_report_shares_the_projections_and_draws_one_processs_pictures(tiny, tmp_path):
    common = ["report", "--ckpt_path", str(tiny), "--layers", "conv2", "conv5", "--units", "6",
              "--occlusion_images", "1", "--tile", "16", "--batch_size", "7"]
    main([*common, "--out", str(tmp_path / "one")])
    _run([*common, "--out", str(tmp_path / "two")], tmp_path, procs=2)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert one == two and len(one) >= 12  # a panel per unit, the sprites, the occlusion maps
    for path in one:  # each projection computed by one rank, as one process computes it
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes(), path
