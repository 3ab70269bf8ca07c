"""RandomState: the global random state of each process goes into checkpoints and comes back."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from zflight.callbacks import RandomState
from zflight.callbacks.random_state import capture_random_state, restore_random_state


def _draws() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(4), np.random.rand(4), random.random()


def _equal(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_restoring_a_captured_state_repeats_every_generators_draws():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # leaves NumPy a cached Gaussian, part of its state
    state = capture_random_state()
    first = _draws()
    assert not _equal(_draws(), first)
    restore_random_state(state)
    assert _equal(_draws(), first)


def test_the_saved_state_reads_back_with_weights_only():
    callback = RandomState()
    buffer = io.BytesIO()
    torch.save({"callbacks": {callback.state_key: callback.state_dict()}}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)["callbacks"][callback.state_key]
    assert saved["world_size"] == 1 and len(saved["ranks"]) == 1
    first = _draws()
    callback.load_state_dict(saved)
    assert _equal(_draws(), first)


def test_a_state_of_another_format_or_process_count_warns_in_one_line():
    callback = RandomState()
    state = callback.state_dict()
    with pytest.warns(UserWarning, match="format 0.*not be bit-identical") as record:
        callback.load_state_dict({**state, "version": 0})
    assert "\n" not in str(record[0].message)
    first = _draws()
    with pytest.warns(UserWarning, match="saved by 2 processes and this run has 1"):
        callback.load_state_dict({**state, "world_size": 2, "ranks": state["ranks"] * 2})
    assert _equal(_draws(), first)  # rank 0's state was restored all the same


def test_the_cli_adds_one_random_state_callback(tmp_path):
    from tests.cli.test_fit import _tiny, main

    cli = main(["fit", *_tiny(tmp_path)])
    assert sum(isinstance(c, RandomState) for c in cli.trainer.callbacks) == 1
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=True)
    assert "RandomState" in ckpt["callbacks"]
