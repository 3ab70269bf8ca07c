"""The global random state in every checkpoint, so that ``--ckpt_path last`` continues the run exactly.

:class:`RandomState` (which ``python -m zflight fit`` always adds, as it adds ``ModelCheckpoint``)
writes the global torch (CPU, and the current CUDA device's when CUDA is in use), NumPy and
Python ``random`` generators of every process into each checkpoint, and puts them back when a
run resumes from it. The data side (the order of the training samples, the position in the
epoch, the augmentation of each sample) is saved by zflight's data modules and their loaders:
see :mod:`zflight.data` and ``docs/resume.md``.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["RandomState", "capture_random_state", "restore_random_state"]

#: Format of the saved state; a checkpoint with another version is refused with a warning.
_VERSION = 1


def capture_random_state() -> dict[str, Any]:
    """This process's global torch, CUDA (current device), NumPy and Python random states.

    Everything is a tensor, an int, a float, a list or ``None``, so a checkpoint holding it is
    read with ``torch.load(weights_only=True)`` (NumPy's key array is stored as a torch tensor).

    Returns:
        ``{"torch", "cuda", "numpy", "python"}``; ``cuda`` is ``None`` when CUDA is not
        initialized in this process (then nothing on a GPU drew from it yet).

    Example:
        >>> state = capture_random_state()
        >>> a = torch.rand(3)
        >>> restore_random_state(state)
        >>> torch.equal(torch.rand(3), a)
        True
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    cuda = None
    # Asking for the CUDA state would create a context on a machine that never used the GPU
    # in this process (and on every visible GPU with get_rng_state_all): only the current one.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        cuda = {"device": int(device), "state": torch.cuda.get_rng_state(device)}
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss},
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Set this process's global random generators to a :func:`capture_random_state` result.

    Args:
        state: what :func:`capture_random_state` returned (possibly read back from a checkpoint).

    Raises:
        KeyError: ``state`` lacks one of ``torch``, ``numpy``, ``python``.

    Example:
        >>> restore_random_state(capture_random_state())
    """
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        # The device of this process (a resumed run may see its GPU under another index).
        torch.cuda.set_rng_state(cuda["state"], torch.cuda.current_device())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32) if torch.is_tensor(n["keys"]) else np.asarray(n["keys"], np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class RandomState(Callback):
    """Saves the global random state of every process in each checkpoint; restores it on resume.

    What the rest of a run draws from the global generators (dropout, ``torch.rand`` in a
    ``training_step``, the validation loader's worker seeds) then continues where the
    checkpoint left it, so a resumed run takes the same steps as an uninterrupted one. Under
    DDP every rank's state is gathered into the checkpoint (which rank 0 writes) and each rank
    gets its own back; resumed with another number of processes, each rank takes the state of
    ``rank % saved_ranks`` and a warning says the run is no longer the same.

    The state is put back when the checkpoint is loaded, which Lightning does after the CLI's
    ``seed_everything`` and before it builds the training loader, so draws made when the
    loader's iterator is created come after it, as in an uninterrupted run. A checkpoint
    without this state (written before it existed) still resumes, with a one-line warning.

    It also flushes the loggers when a checkpoint is written and again before the next batch (or
    epoch): Lightning writes a step's metrics just after that step's checkpoint, and TensorBoard
    buffers them, so a ``kill -9`` soon after a checkpoint would otherwise lose the metrics of the
    steps before it, which the resumed run does not redo.

    ``python -m zflight fit`` adds this callback by itself; with a bare ``Trainer`` add it to
    ``callbacks``.

    Example:
        >>> trainer = Trainer(callbacks=[RandomState()])  # doctest: +SKIP
        >>> trainer.fit(module, datamodule=dm, ckpt_path="last")  # doctest: +SKIP
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: Trainer | None = None
        self._flush_next = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # state_dict() gets no trainer, and needs the rank and the process group.
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """Every process's random state: ``{"version", "world_size", "ranks": [state of rank 0, ...]}``.

        Under DDP this is a collective call; Lightning makes it on every rank when it saves.
        """
        mine = capture_random_state()
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                ranks = [None] * world
                torch.distributed.all_gather_object(ranks, mine)
        return {"version": _VERSION, "world_size": len(ranks), "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put this process's saved random state back (the one of its rank)."""
        if state_dict.get("version") != _VERSION or not state_dict.get("ranks"):
            warnings.warn(
                f"the checkpoint's random state has format {state_dict.get('version')!r}, not {_VERSION}: "
                "not restored; the rest of the run will not be bit-identical to an uninterrupted one",
                stacklevel=2,
            )
            return
        ranks = state_dict["ranks"]
        trainer = self._trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        if world != len(ranks):
            warnings.warn(
                f"the checkpoint was saved by {len(ranks)} processes and this run has {world}: "
                "the rest of the run will not be bit-identical to an uninterrupted one",
                stacklevel=2,
            )
        restore_random_state(ranks[rank % len(ranks)])

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        _flush_loggers(trainer)
        self._flush_next = True  # the metrics of the checkpoint's own step are logged after it

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._flush_next:
            _flush_loggers(trainer)
            self._flush_next = False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.on_train_batch_start(trainer, pl_module, None, 0)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # validate/test/predict from a checkpoint continue no run
        if self.state_key not in checkpoint.get("callbacks", {}):
            # A checkpoint from before this callback: it resumes, but from fresh random state.
            rank_zero_warn(
                "the checkpoint holds no random state (saved before zflight stored it): the rest of "
                "the run will not be bit-identical to an uninterrupted one",
                stacklevel=2,
            )


def _flush_loggers(trainer: Trainer) -> None:
    """Write what the loggers buffer (TensorBoard: ``SummaryWriter.flush``); rank 0 only."""
    for logger in trainer.loggers:
        logger.save()
