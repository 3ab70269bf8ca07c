"""What zflight's data modules share: their classes, their normalization, their loaders.

:class:`ClassificationDataModule` holds the class names and the per-channel mean and std that
the CLI links to the model and the figures use to un-normalize images. :class:`SplitDataModule`
adds three map-style datasets (train, val, test) and the four DataLoaders over them; the packed
ImageNet module has loaders of its own and uses only the first.

The training loader is resumable (``docs/resume.md``): :class:`ResumableSampler` draws each
epoch's order from ``(seed, epoch)`` alone and gives every sample a seed of its own for its
augmentation, and :class:`ResumableLoader` tells Lightning how far into the epoch it is, so a
run resumed from a checkpoint (saved at an epoch's end or in its middle) reads the same
samples, augmented the same way, as the uninterrupted run would have.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "ClassificationDataModule",
    "SplitDataModule",
    "ResumableSampler",
    "ResumableLoader",
    "SeededSamples",
    "LoaderPosition",
    "SkippablePass",
    "sample_seed",
]

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentation in ``epoch`` of a run shuffled with ``seed``.

    A splitmix64 mix of the three numbers: nearby inputs give unrelated seeds.

    Args:
        seed: the run's shuffling seed.
        epoch: the epoch (from 0).
        index: the sample's index in the dataset.

    Returns:
        An int in ``[0, 2**63)``.

    Example:
        >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 2)
        True
    """
    x = 0
    for part in (seed, epoch, index):
        x = (x ^ (int(part) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
        x ^= x >> 31
    return x >> 1


class SeededSamples(Dataset):
    """Reads ``dataset[index]`` with torch, NumPy and Python ``random`` seeded by the sample's seed.

    Indexed with an ``(index, seed)`` pair (what :class:`ResumableSampler` yields), the global
    generators of the reading process are seeded with ``seed`` for that one read and put back
    afterwards, so a random transform gives the same result for a sample whichever process or
    worker reads it, in whatever order, and the training run's own random stream (dropout) is
    not touched. A plain ``int`` index reads the item as it is.

    Args:
        dataset: a map-style dataset.

    Example:
        >>> ds = SeededSamples(TensorDataset(torch.zeros(4)))  # doctest: +SKIP
        >>> ds[(2, 12345)]  # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        # Only the CPU generator: torch.manual_seed would also reseed (and so reset) CUDA's.
        torch_state = torch.default_generator.get_state()
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            return self.dataset[index]
        finally:
            torch.default_generator.set_state(torch_state)
            np.random.set_state(np_state)
            random.setstate(py_state)


class SkippablePass:
    """:meth:`skip` and the start of a pass: one mechanism for :class:`ResumableSampler` and the
    packed ImageNet module's sampler.

    A class using it has ``epoch`` and sets ``start_batch = 0`` and ``_skip = None`` in
    ``__init__``; its ``__iter__`` starts at :meth:`_pass_start`.
    """

    epoch: int
    start_batch: int
    _skip: tuple[int, int] | None

    def skip(self, epoch: int, batches: int) -> None:
        """Start the next pass over ``epoch`` (only that epoch) after its first ``batches`` batches.

        The batches that follow are those of an unbroken pass: their order (and the crops or
        sample seeds the sampler draws) follow from ``(seed, epoch)`` alone.

        Args:
            epoch: the epoch that was interrupted.
            batches: batches of it already trained on.

        Raises:
            ValueError: a negative ``epoch`` or ``batches``.
        """
        if epoch < 0 or batches < 0:
            raise ValueError(f"epoch and batches must be >= 0, got epoch={epoch}, batches={batches}")
        self._skip = (int(epoch), int(batches))

    def _pass_start(self, batches: int) -> int:
        """The first batch of the pass now starting (of ``batches`` in the epoch); consumes the skip."""
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = min(self._skip[1], batches)
        self._skip = None  # a skip is for one pass: the next epoch starts from its beginning
        self.start_batch = start
        return start


class ResumableSampler(SkippablePass, DistributedSampler):
    """The training order of one process, a function of ``(seed, epoch)``, resumable mid-epoch.

    It is PyTorch's :class:`~torch.utils.data.DistributedSampler` (each epoch a permutation
    drawn from ``seed + epoch``, split across ``num_replicas`` processes; Lightning leaves a
    sampler of that class in place under DDP) with three additions:

    - with ``seed_samples`` it yields ``(index, sample_seed(seed, epoch, index))`` pairs, for
      :class:`SeededSamples`, so each sample's augmentation is fixed by the run's seed too;
    - :meth:`skip` makes the next pass over an epoch start after the batches already trained on;
    - it remembers where the current pass started (:attr:`start_batch`), which
      :class:`ResumableLoader` adds to the batches it has handed out.

    Args:
        dataset: the (map-style) training dataset.
        batch_size: the loader's batch size (a skip is counted in batches).
        num_replicas: number of processes (1 without DDP).
        rank: this process's rank.
        shuffle: a new order every epoch (else the dataset's order).
        seed: the run's shuffling seed (the same on every process).
        drop_last: drop the tail that does not split evenly across processes.
        seed_samples: yield ``(index, seed)`` pairs instead of indices.

    Example:
        >>> s = ResumableSampler(range(10), batch_size=4, seed=0, seed_samples=False)
        >>> s.set_epoch(1); s.skip(1, 2)
        >>> len(list(s))  # the first two batches of epoch 1 are skipped
        2
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        seed_samples: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.seed_samples = seed_samples
        self.start_batch = 0
        self._skip: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())  # the whole epoch's order, as the sampler draws it
        start = self._pass_start(-(-len(indices) // self.batch_size))
        for index in indices[start * self.batch_size :]:
            yield (index, sample_seed(self.seed, self.epoch, index)) if self.seed_samples else index


class LoaderPosition:
    """The position of a training loader in its epoch, saved and restored: one mechanism for
    :class:`ResumableLoader` and the packed ImageNet module's loader.

    A class using it has ``sampler`` (a :class:`ResumableSampler`), counts the batches of the
    current pass it handed out in ``_handed_out``, and has ``__len__`` (batches per epoch).
    Lightning stores ``state_dict()`` in each checkpoint and gives it back to
    :meth:`load_state_dict` of the resumed run's loader (see ``docs/resume.md``).
    """

    sampler: Any
    _handed_out: int

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the sampler's epoch and the batches of it handed out so far."""
        return {"epoch": int(self.sampler.epoch), "batches": self.sampler.start_batch + self._handed_out}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after the batches ``state_dict`` counts (the next epoch if it was complete)."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= len(self):  # type: ignore[arg-type]
            # The epoch was finished: the next pass is the next epoch's, from its start. Set the
            # epoch now: with workers, the iterator draws its first indices when it is created,
            # before Lightning calls set_epoch.
            self.sampler.set_epoch(epoch + 1)
            return
        self.sampler.set_epoch(epoch)
        self.sampler.skip(epoch, batches)


class ResumableLoader(LoaderPosition, DataLoader):
    """A DataLoader over a :class:`ResumableSampler` that Lightning saves and restores mid-epoch.

    Lightning stores ``state_dict()`` of every training loader that has one in each checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and, when a run resumes, gives it back to
    :meth:`load_state_dict` of the new loader before it creates the iterator. The state is the
    epoch and how many batches of it were handed out; resuming sets the sampler to that epoch
    and skips those batches (or, when the epoch was finished, moves to the next one), so no
    batch is read twice or missed and the workers' prefetching starts at the right place.

    Takes DataLoader's arguments; ``sampler`` must be a :class:`ResumableSampler` (``batch_size``
    the same as the sampler's).

    Raises:
        TypeError: ``sampler`` is not a :class:`ResumableSampler`.

    Example:
        >>> sampler = ResumableSampler(ds, batch_size=64, seed=0)  # doctest: +SKIP
        >>> loader = ResumableLoader(SeededSamples(ds), batch_size=64, sampler=sampler)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"sampler must be a ResumableSampler, got {type(self.sampler).__name__}")
        self._handed_out = 0

    def __iter__(self) -> Iterator[Any]:
        self._handed_out = 0
        self.sampler.start_batch = 0  # set again by the sampler when its pass starts
        return _Counted(super().__iter__(), self)



class _Counted(Iterator[Any]):
    """The DataLoader iterator, counting the batches it hands out into the loader."""

    def __init__(self, iterator: Iterator[Any], loader: ResumableLoader) -> None:
        self._iterator, self._loader = iterator, loader

    def __next__(self) -> Any:
        batch = next(self._iterator)
        self._loader._handed_out += 1
        return batch

    def __len__(self) -> int:
        return len(self._iterator)  # type: ignore[arg-type]


def _rank_world(module: L.LightningDataModule) -> tuple[int, int]:
    """``(rank, world size)`` of this process: the trainer's, else torch.distributed's, else (0, 1)."""
    trainer = getattr(module, "trainer", None)
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ClassificationDataModule(L.LightningDataModule):
    """A data module of labelled images; subclasses set ``_classes``, ``_mean`` and ``_std``."""

    _classes: Sequence[str] = ()
    _mean: tuple[float, ...] = ()
    _std: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes (known right after construction)."""
        return len(self._classes)

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return list(self._classes)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean used for normalization."""
        return tuple(self._mean)

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std used for normalization."""
        return tuple(self._std)

    # Where the training loader is, for checkpoints. Lightning also saves a stateful loader's
    # state with the loops, but gives it back only for a checkpoint saved inside an epoch; after
    # one saved at an epoch's end the new loader would start at epoch 0 and, with worker
    # processes, prefetch that epoch's samples before Lightning sets the epoch. The data module's
    # own state is restored in every case, before the loader is made.
    _train_loader_made: Any = None
    _train_loader_state: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"train_loader": ...}``, the training loader's position, which Lightning stores in checkpoints."""
        loader = self._train_loader_made
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's loader position for the next training loader (made after this)."""
        self._train_loader_state = state_dict.get("train_loader")

    def _resumable(self, loader: Any) -> Any:
        """Remember ``loader`` (for :meth:`state_dict`) and put a checkpoint's position into it."""
        if self._train_loader_state is not None:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader_made = loader
        return loader


class SplitDataModule(ClassificationDataModule):
    """Train, val and test datasets, built by ``setup()``, and the DataLoaders over them.

    Subclasses set ``batch_size`` and ``num_workers``, fill the three datasets in ``setup()``
    and may add DataLoader options in :meth:`_loader_options`. ``predict`` uses the test split.
    The training loader is a :class:`ResumableLoader`: its order and each sample's augmentation
    follow :attr:`shuffle_seed` and the epoch, and checkpoints hold its position, so a resumed
    run reads what the uninterrupted run would have (``docs/resume.md``).
    """

    batch_size: int
    num_workers: int
    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None
    _shuffle_seed: int | None = None

    @property
    def shuffle_seed(self) -> int:
        """Seed of the training order and of each sample's augmentation, fixed for the run.

        Taken at first use from ``seed_everything``'s seed (``PL_GLOBAL_SEED``, what Lightning's
        own DDP sampler uses; 0 when unset) and saved in checkpoints (:meth:`state_dict`), so a
        resumed run keeps it even if its ``seed_everything`` differs.
        """
        if self._shuffle_seed is None:
            self._shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._shuffle_seed

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position and ``shuffle_seed``, which Lightning stores in checkpoints."""
        return {**super().state_dict(), "shuffle_seed": self.shuffle_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the run's shuffling seed and loader position back (before the loaders are made)."""
        super().load_state_dict(state_dict)
        if "shuffle_seed" in state_dict:
            self._shuffle_seed = int(state_dict["shuffle_seed"])

    def _loader_options(self) -> dict[str, Any]:
        """Keyword arguments of every DataLoader beyond the dataset, batch size and shuffling."""
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def _loader(self, ds: Dataset | None, name: str, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{name} is not set up yet: call setup() first")
        # Its own generator for the workers' base seed: with persistent workers an uninterrupted
        # run creates the iterator once (in the sanity check, whose draws Lightning undoes) and a
        # resumed run at its first validation, so a draw from the global generator would make
        # the resumed run draw once more than the uninterrupted one.
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(self.shuffle_seed),
                          **self._loader_options())

    def _train_loader(self, ds: Dataset | None, shuffle: bool = True) -> ResumableLoader:
        """A resumable loader over ``ds``: this process's share, each sample seeded (see the module)."""
        if ds is None:
            raise RuntimeError("train_dataset is not set up yet: call setup() first")
        rank, world = _rank_world(self)
        seed = self.shuffle_seed
        sampler = ResumableSampler(
            ds, batch_size=self.batch_size, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
        )
        # Its own generator for the workers' base seed: creating the iterator draws nothing from
        # the global generator, so a resumed run's draws line up with an uninterrupted one's.
        loader = ResumableLoader(
            SeededSamples(ds),
            batch_size=self.batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed),
            **self._loader_options(),
        )
        return self._resumable(loader)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x, y)``, resumable mid-epoch (:class:`ResumableLoader`)."""
        return self._train_loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader(self.val_dataset, "val_dataset", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order."""
        return self._loader(self.test_dataset, "test_dataset", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split's batches, in order."""
        return self._loader(self.test_dataset, "test_dataset", shuffle=False)
