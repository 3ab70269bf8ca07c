"""The resumable training loaders (zflight.data._base, and the packed module's): a run resumed
from a checkpoint saved mid-epoch or at an epoch's end trains on the same batches as an
uninterrupted run, for the shapes, image-folder and packed data modules (docs/resume.md)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.utils.data import Dataset

from zflight.callbacks import RandomState
from zflight.data import ImageFolderDataModule, PackedImageNetDataModule, ShapesDataModule
from zflight.data._base import ResumableLoader, ResumableSampler, SeededSamples, sample_seed
from zflight.module import ImageClassifier

packmod = importlib.import_module("zflight.data.pack")


class _Draws(Dataset):
    """Item i: ``(i, a torch draw, a NumPy draw, a Python draw)``, to see what a read was seeded with."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[int, float, float, float]:
        import random

        return i, float(torch.rand(())), float(np.random.rand()), random.random()


def _batches(loader) -> list[list[int]]:
    return [b[0].tolist() for b in loader]


def test_sampler_order_is_a_function_of_seed_and_epoch_and_skip_starts_mid_epoch():
    s = ResumableSampler(range(10), batch_size=3, seed=5, seed_samples=False)
    s.set_epoch(2)
    whole = list(s)
    assert sorted(whole) == list(range(10))
    assert list(s) == whole  # no hidden state between passes
    s.set_epoch(3)
    assert list(s) != whole
    s.set_epoch(2)
    s.skip(2, 2)
    assert list(s) == whole[6:] and s.start_batch == 2
    assert list(s) == whole and s.start_batch == 0  # a skip is for one pass only
    s.skip(1, 2)  # another epoch's skip does not apply
    assert list(s) == whole
    with pytest.raises(ValueError, match="batches"):
        s.skip(0, -1)
    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(range(10), batch_size=0)


def test_seeded_samples_read_the_same_whoever_reads_and_leave_the_global_state_alone():
    ds = SeededSamples(_Draws())
    torch.manual_seed(1)
    np.random.seed(1)
    before = torch.get_rng_state()
    first = ds[(3, sample_seed(0, 1, 3))]
    assert torch.equal(torch.get_rng_state(), before)  # the run's own stream is untouched
    torch.manual_seed(99)
    np.random.seed(99)
    assert ds[(3, sample_seed(0, 1, 3))] == first  # same sample seed, other global state
    assert ds[(3, sample_seed(0, 2, 3))][1:] != first[1:]  # another epoch, other draws
    assert ds[3][0] == 3  # a plain index reads the item as it is


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_resumes_after_the_batches_handed_out(num_workers):
    def loader() -> ResumableLoader:
        sampler = ResumableSampler(_Draws(), batch_size=3, seed=7)
        return ResumableLoader(SeededSamples(_Draws()), batch_size=3, sampler=sampler, num_workers=num_workers,
                               persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(7))

    straight = loader()
    straight.sampler.set_epoch(1)
    it = iter(straight)
    first = [next(it), next(it)]
    state = straight.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    rest = list(it)
    assert straight.state_dict() == {"epoch": 1, "batches": 4}

    resumed = loader()  # a new process: a fresh loader at epoch 0, given the saved state
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(first) + len(again) == len(straight) == 4
    for a, b in zip(rest, again):
        for x, y in zip(a, b):
            assert torch.equal(x, y)  # same samples, same per-sample draws
    assert resumed.state_dict() == {"epoch": 1, "batches": 4}  # counts the skipped batches too

    finished = loader()
    finished.load_state_dict({"epoch": 1, "batches": 4})  # a finished epoch: the next one starts
    assert finished.sampler.epoch == 2 and len(list(finished)) == 4


def test_loader_takes_only_a_resumable_sampler():
    with pytest.raises(TypeError, match="ResumableSampler"):
        ResumableLoader(_Draws(), batch_size=2)


def test_shuffle_seed_is_saved_and_restored():
    dm = ShapesDataModule(train_size=8, val_size=4, test_size=4, batch_size=4)
    state = dm.state_dict()
    other = ShapesDataModule(train_size=8, val_size=4, test_size=4, batch_size=4)
    other._shuffle_seed = state["shuffle_seed"] + 1
    other.load_state_dict(state)
    assert other.shuffle_seed == dm.shuffle_seed


# ------------------------------------------------------------------ resuming a real fit, per data module
def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 3)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(small).resize((64, 60), Image.BILINEAR).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="module")
def pack(folder, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("pack") / "zf"
    packmod.pack(folder, dst, size=56, workers=0, chunk_size=8, progress=False)
    return dst


def _datamodule(kind: str, folder: Path, pack: Path):
    # 36 training images at batch 8: 5 steps per epoch (the last one short).
    if kind == "shapes":
        return ShapesDataModule(image_size=48, train_size=36, val_size=8, test_size=8, batch_size=8)
    if kind == "folder":  # with worker processes: each sample's flip and crop is seeded
        return ImageFolderDataModule(str(folder), resize=56, crop_size=48, batch_size=8, num_workers=2, pin_memory=False)
    return PackedImageNetDataModule(str(pack), crop_size=48, batch_size=8, num_workers=1, seed=3)


def _fit(tmp: Path, kind: str, folder: Path, pack: Path, epochs: int, ckpt: Path | None = None,
         random_state: bool = True) -> dict[str, torch.Tensor]:
    seed_everything(0)
    dm = _datamodule(kind, folder, pack)
    module = ImageClassifier(arch="zfnet", num_classes=dm.num_classes, width=0.125, image_size=48,
                             init="kaiming", dropout=0.5)
    callbacks = [
        ModelCheckpoint(dirpath=tmp / "steps", filename="{step}", every_n_train_steps=3, save_top_k=-1),
        ModelCheckpoint(dirpath=tmp / "epochs", filename="{epoch}", save_top_k=-1),
    ]
    if random_state:
        callbacks.append(RandomState())
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                      num_sanity_val_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["shapes", "folder", "packed"])
def test_resumed_mid_epoch_or_at_epoch_end_the_weights_are_those_of_an_uninterrupted_run(
    kind, folder, pack, tmp_path
):
    straight = _fit(tmp_path / "straight", kind, folder, pack, epochs=3)
    # Step 9 is the 4th batch of the second epoch (5 per epoch); epoch=0 is saved after validation.
    mid = tmp_path / "straight" / "steps" / "step=9.ckpt"
    end = tmp_path / "straight" / "epochs" / "epoch=0.ckpt"
    name = type(_datamodule(kind, folder, pack)).__qualname__
    saved = torch.load(mid, weights_only=True)
    assert saved[name]["train_loader"] == {"epoch": 1, "batches": 4}
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 4}]
    assert torch.load(end, weights_only=True)[name]["train_loader"] == {"epoch": 0, "batches": 5}
    assert _same(_fit(tmp_path / "mid", kind, folder, pack, epochs=3, ckpt=mid), straight)
    assert _same(_fit(tmp_path / "end", kind, folder, pack, epochs=3, ckpt=end), straight)


def test_without_the_saved_state_a_resumed_run_differs(folder, pack, tmp_path):
    """The comparison above can fail: without the loader's position, or without the random
    state, the resumed run is another run."""
    straight = _fit(tmp_path / "straight", "shapes", folder, pack, epochs=2)
    mid = tmp_path / "straight" / "steps" / "step=6.ckpt"
    ckpt = torch.load(mid, weights_only=True)
    ckpt["loops"]["fit_loop"]["state_dict"].pop("combined_loader")
    ckpt["ShapesDataModule"].pop("train_loader")
    torch.save(ckpt, tmp_path / "no_position.ckpt")
    assert not _same(_fit(tmp_path / "a", "shapes", folder, pack, epochs=2, ckpt=tmp_path / "no_position.ckpt"),
                     straight)
    assert not _same(_fit(tmp_path / "b", "shapes", folder, pack, epochs=2, ckpt=mid, random_state=False),
                     straight)
