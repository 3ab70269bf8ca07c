"""What zflight's data modules share: their classes, their normalization, their loaders.

:class:`ClassificationDataModule` holds the class names and the per-channel mean and std that
the CLI links to the model and the figures use to un-normalize images. :class:`SplitDataModule`
adds three map-style datasets (train, val, test) and the four DataLoaders over them; the packed
ImageNet module has loaders of its own and uses only the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["ClassificationDataModule", "SplitDataModule"]


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


class SplitDataModule(ClassificationDataModule):
    """Train, val and test datasets, built by ``setup()``, and the DataLoaders over them.

    Subclasses set ``batch_size`` and ``num_workers``, fill the three datasets in ``setup()``
    and may add DataLoader options in :meth:`_loader_options`. ``predict`` uses the test split.
    """

    batch_size: int
    num_workers: int
    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None

    def _loader_options(self) -> dict[str, Any]:
        """Keyword arguments of every DataLoader beyond the dataset, batch size and shuffling."""
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def _loader(self, ds: Dataset | None, name: str, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{name} is not set up yet: call setup() first")
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle,
                          **self._loader_options())

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x, y)``."""
        return self._loader(self.train_dataset, "train_dataset", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader(self.val_dataset, "val_dataset", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order."""
        return self._loader(self.test_dataset, "test_dataset", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split's batches, in order."""
        return self._loader(self.test_dataset, "test_dataset", shuffle=False)
