"""Tests of the ImageNet packer (zflight.data.pack) and the data module that reads packs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from zflight.data import (
    ImageFolderDataModule,
    PackedImageNetDataModule,
    crop_flip_normalize,
)
from zflight.data.packed import PackedSampler

from tests.imagenet_folder import CLASSES, CROP, SIZE, epoch_batches, packed_module

# zflight.data.pack is the module (the package does not export the function, which would hide it).
packmod = importlib.import_module("zflight.data.pack")

ROOT = Path(__file__).resolve().parents[2]


def test_eval_and_ten_crops_match_the_folder_data_module(src, packed):
    folder = ImageFolderDataModule(src, resize=SIZE, crop_size=CROP, test_crops=10, num_workers=0)
    folder.setup()
    dm = packed_module(packed, test_crops=10, batch_size=9)
    dm.setup()
    x_val, y_val = dm.transform_batch(next(iter(dm.val_dataloader())))
    x_test, y_test = dm.transform_batch(next(iter(dm.test_dataloader())))
    assert x_val.shape == (9, 3, CROP, CROP) and x_test.shape == (9, 10, 3, CROP, CROP)
    for i in range(9):
        ref_val, label = folder.val_dataset[i]
        ref_test, _ = folder.test_dataset[i]
        assert y_val[i] == label == y_test[i]
        torch.testing.assert_close(x_val[i], ref_val, atol=1e-5, rtol=0)
        torch.testing.assert_close(x_test[i], ref_test, atol=1e-5, rtol=0)  # TenCrop's order too


# ------------------------------------------------------------------------------ data module
def test_data_module_knows_classes_and_sizes_and_names_a_missing_pack(packed, tmp_path):
    dm = packed_module(packed)
    assert dm.num_classes == 3 and dm.classes == sorted(CLASSES) and dm.image_size == CROP
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        PackedImageNetDataModule(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="crop_size"):
        PackedImageNetDataModule(packed, crop_size=SIZE + 1)


def test_training_crops_are_deterministic_under_a_seed_and_change_with_epoch_and_seed(packed):
    def crops(seed: int, epoch: int) -> torch.Tensor:
        dm = packed_module(packed, seed=seed)
        dm.setup("fit")
        return torch.cat([dm.transform_batch(b)[0] for b in epoch_batches(dm, epoch)])

    a = crops(0, 0)
    assert torch.equal(a, crops(0, 0))
    assert not torch.equal(a, crops(0, 1))
    assert not torch.equal(a, crops(1, 0))


def test_each_sample_gets_its_own_crop_and_flip(packed):
    dm = packed_module(packed, batch_size=24)
    dm.setup("fit")
    (batch,) = epoch_batches(dm)
    # Every sample's own parameters are drawn: the batch mixes flips and offsets.
    assert 0 < int(batch.flip.sum()) < 24 and len(set(batch.top.tolist())) > 1 and len(set(batch.left.tolist())) > 1
    x, y = dm.transform_batch(batch)
    for i in range(24):
        t, l = int(batch.top[i]), int(batch.left[i])
        ref = batch.images[i, t : t + CROP, l : l + CROP].permute(2, 0, 1).float() / 255
        ref = ref.flip(-1) if batch.flip[i] else ref
        ref = (ref - torch.tensor(dm.mean).view(3, 1, 1)) / torch.tensor(dm.std).view(3, 1, 1)
        torch.testing.assert_close(x[i], ref, atol=1e-5, rtol=0)
    # The same image repeated gets different crops when its parameters differ.
    same = batch.images[:1].expand(4, -1, -1, -1)
    out = crop_flip_normalize(
        same, torch.tensor([0, 0, 8, 0]), torch.tensor([0, 8, 0, 0]), torch.tensor([False, False, False, True]), CROP
    )
    assert all(not torch.equal(out[i], out[j]) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(out[3], out[0].flip(-1))


def test_cpu_side_augmentation_gives_the_same_batches(packed):
    gpu_style = packed_module(packed, seed=3)
    cpu_style = packed_module(packed, seed=3, device_augment=False)
    gpu_style.setup("fit"), cpu_style.setup("fit")
    for packed_batch, ready in zip(epoch_batches(gpu_style), epoch_batches(cpu_style), strict=True):
        x, y = gpu_style.on_after_batch_transfer(packed_batch, 0)
        assert cpu_style.on_after_batch_transfer(ready, 0) is ready
        assert torch.equal(x, ready[0]) and torch.equal(y, ready[1])


def test_sampler_shards_every_row_once_per_epoch_across_ranks():
    rows = np.arange(100, 111)  # 11 rows over 3 ranks: one pad repeats a row
    seen = []
    for rank in range(3):
        s = PackedSampler(rows, batch_size=2, image_size=8, crop_size=6, mode="random", seed=5, rank=rank, world_size=3)
        s.set_epoch(2)
        seen.append(np.concatenate([b[0] for b in s]))
        assert len(s) == 2 and len(seen[-1]) == 4
    allrows = np.concatenate(seen)
    assert set(allrows.tolist()) == set(rows.tolist()) and len(allrows) == 12


DDP_SCRIPT = """
import sys, torch, lightning as L
from zflight.data import PackedImageNetDataModule

class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []
    def training_step(self, batch, i):
        x, y = batch
        return (self.w * x.mean()).sum()
    def on_train_batch_start(self, batch, i):
        pass
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

class Recording(PackedImageNetDataModule):
    def on_after_batch_transfer(self, batch, idx):
        self.trainer.lightning_module.seen.append((self.trainer.current_epoch, batch.index.tolist()))
        return super().on_after_batch_transfer(batch, idx)

if __name__ == "__main__":
    dm = Recording(sys.argv[1], crop_size=48, batch_size=5, num_workers=1)
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(model, dm)
    with open(f"{sys.argv[2]}/rank{trainer.global_rank}.txt", "w") as f:
        f.write(repr(model.seen))
"""


def test_two_ddp_processes_each_read_their_own_shard(packed, tmp_path):
    script = tmp_path / "ddp_pack.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(packed), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [eval((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]
    for epoch in range(2):
        shards = [[i for e, rows in s if e == epoch for i in rows] for s in seen]
        assert len(shards[0]) == len(shards[1]) == 12  # 24 images, 2 ranks, batches of 5, 5, 2
        assert sorted(shards[0] + shards[1]) == list(range(24))  # each image once across ranks
    epoch0 = [rows for e, rows in seen[0] if e == 0]
    epoch1 = [rows for e, rows in seen[0] if e == 1]
    assert epoch0 != epoch1  # Lightning's set_epoch reshuffles


def test_fit_with_the_imagenet_config_reads_the_pack(packed, tmp_path, capsys):
    from zflight.cli import main

    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "zfnet_imagenet.yaml"),
        f"--data.init_args.root={packed}",
        f"--data.init_args.crop_size={CROP}",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=1",
        "--data.init_args.test_crops=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        "--trainer.fast_dev_run=2",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--model.width=0.125",
        "--model.channels_last=false",
        "--trainer.enable_progress_bar=false",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["zflight"])
        mp.chdir(tmp_path)
        cli = main(args)
    assert cli.trainer.global_step == 2
    assert cli.model.hparams.num_classes == 3 and cli.model.hparams.image_size == CROP


def test_packed_images_are_the_validation_batches_image_by_image(packed):
    import pickle

    dm = packed_module(packed, batch_size=9)
    dm.setup("fit")
    x, y = dm.transform_batch(next(iter(dm.val_dataloader())))
    view = dm.val_dataset
    assert len(view) == 9 and len(dm.train_dataset) == 24 and view.classes == sorted(CLASSES)
    for i in range(9):
        xi, yi = view[i]
        torch.testing.assert_close(xi, x[i].contiguous())
        assert yi == int(y[i])
    c = round((SIZE - CROP) / 2)
    pixels = np.load(packed / "val_images.npy")[8, c : c + CROP, c : c + CROP]
    shown = (view.denormalize(view[8][0]) * 255).round().to(torch.uint8).permute(1, 2, 0)
    assert torch.equal(shown, torch.from_numpy(pixels))
    assert len(pickle.dumps(view)) < 10_000  # the path, not the pixels (9 x 56 x 56 x 3 bytes) it has read
    with pytest.raises(IndexError, match="index 9 is out of range for the 9 images of the 'val' split"):
        view[9]
