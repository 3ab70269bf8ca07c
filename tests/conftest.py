"""Test-wide settings."""

import os
from pathlib import Path

import pytest
import torch

# The suite's models are tiny: one thread is as fast as two for them, and on a busy 2-core
# machine torch's spinning OpenMP threads can make a step 50x slower. Subprocesses (the DDP
# tests) inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On a shared, busy CPU, OpenMP threads that spin waiting for each other make tiny models
    # 50x slower; one thread each keeps these tests fast. Restored for other test files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_ckpt_factory(tmp_path_factory):
    """``make(val_size)``: a checkpoint of an untrained tiny ZFNet (seed 0) on 64 px shapes."""
    from zflight.module import ImageClassifier

    def make(val_size: int) -> Path:
        torch.manual_seed(0)
        module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
        path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "datamodule_hyper_parameters": {"image_size": 64, "val_size": val_size, "seed": 0}}, path)
        return path

    return make
