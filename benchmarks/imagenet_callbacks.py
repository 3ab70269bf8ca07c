"""What the ImageNet configs' figures cost, against a training epoch, and what that makes at ImageNet scale.

One Lightning fit of one epoch on a generated pack (``--num-images`` training images, 224 px
crops of 256 px images, the paper's recipe at ``--width``), with the callbacks of
``configs/zfnet_imagenet.yaml`` as configured there (tiles, maps, layers, workers) except that
every one fires after this epoch and ``FeatureEvolution`` probes all the training images:
``FeatureEvolution``, ``TopActivationPanels`` over the validation images, ``FilterGrid`` and
``OcclusionFigures`` (four validation images).

Measured within the run: the time inside each callback's hooks, and inside that the time of
its mining pass (``top_activations``: a forward pass to conv5 per image plus the top-k
bookkeeping), so each callback's cost splits into ``per image x images`` and a fixed part (the
deconvnet projections, the figures, the PNGs). The mining time includes starting the
DataLoader workers, so at small sizes the per-image cost, and the extrapolation, err high. The
training epoch is timed from its first batch to its last, after ``--warmup`` batches (compilation and cuDNN's autotuning left out). Then, per
epoch of ImageNet (1,281,167 training images; a probe of 50,000; 50,000 validation images), each
callback's ``fixed + per image x images`` is set against ``1,281,167 x`` the training time per
image, for one process. Under DDP the training and the mining are shared among the processes,
the fixed part is not: with G GPUs, divide the training epoch and the mining by G. Best of
``--repeats`` fits.

    python benchmarks/imagenet_callbacks.py --threads 1                          # CPU, small
    python benchmarks/imagenet_callbacks.py --device cuda --width 1 --num-images 5120 \\
        --batch-size 256 --precision bf16-mixed                                 # one GPU

Prints a Markdown table with the machine and the date. Nothing is downloaded: the images are
generated (smooth random colour fields) and packed with ``zflight.data.pack``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing as mp
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "zfnet_imagenet.yaml"
IMAGENET_TRAIN, IMAGENET_VAL, PROBE = 1_281_167, 50_000, 50_000
HOOKS = ("on_train_start", "on_validation_end", "on_train_epoch_end", "on_train_end")


def _write_jpeg(job: tuple[Path, int]) -> None:
    """One JPEG of a smooth random colour field, 256-400 px a side."""
    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(256, 400, 2))
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(path, quality=90)


def make_pack(root: Path, num_train: int, num_val: int, classes: int, workers: int) -> Path:
    """``num_train`` + ``num_val`` generated JPEGs in ``root/src/<split>/<class>/``, packed at 256 px."""
    from zflight.data.pack import pack

    jobs = []
    for split, n in (("train", num_train), ("val", num_val)):
        for i in range(n):
            folder = root / "src" / split / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:06d}.JPEG", len(jobs)))
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_write_jpeg, jobs, chunksize=64)
    else:
        for job in jobs:
            _write_jpeg(job)
    dst = root / "pack"
    pack(root / "src", dst, size=256, workers=workers, progress=False)
    return dst


def config_callbacks(probe: int) -> list[Any]:
    """The config's figure callbacks, each made to fire after epoch 1, the probe of ``probe`` images."""
    from zflight.callbacks import (
        FeatureEvolution,
        FilterGrid,
        OcclusionFigures,
        TopActivationPanels,
    )

    listed = yaml.safe_load(CONFIG.read_text())["trainer"]["callbacks"]
    args = {c["class_path"].rsplit(".", 1)[-1]: dict(c.get("init_args") or {}) for c in listed}
    return [
        FeatureEvolution(**{**args["FeatureEvolution"], "epochs": [1], "probe_size": probe}),
        TopActivationPanels(**{**args["TopActivationPanels"], "epochs": [1]}),
        FilterGrid(**args["FilterGrid"]),
        OcclusionFigures(**{**args["OcclusionFigures"], "every_n_epochs": 1}),
    ]


@contextlib.contextmanager
def timed_mining(spent: dict[str, float], device: torch.device) -> Iterator[None]:
    """Time every ``top_activations`` call of FeatureEvolution and TopActivationPanels into ``spent``."""
    from zflight.callbacks import evolution, panels

    originals = {evolution: evolution.top_activations, panels: panels.top_activations}
    keys = {evolution: "FeatureEvolution mining", panels: "TopActivationPanels mining"}
    try:
        for module, fn in originals.items():
            module.top_activations = _timed(fn, spent, keys[module], device)
        yield
    finally:
        for module, fn in originals.items():
            module.top_activations = fn


class _EpochTimer:
    """Times the training batches after the first ``warmup`` ones (a Lightning callback)."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        from lightning.pytorch import Callback

        timer = self

        class Hooks(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if batch_idx == warmup - 1:
                    timer.start, timer.images = time.perf_counter(), 0
                elif batch_idx >= warmup:
                    timer.end = time.perf_counter()
                    timer.images += int(batch.labels.shape[0] if hasattr(batch, "labels") else len(batch[1]))

        self.callback = Hooks()
        self.start = self.end = 0.0
        self.images = 0

    def per_image(self) -> float:
        return (self.end - self.start) / max(self.images, 1)


def one_fit(args: argparse.Namespace, pack_root: Path, log_dir: str) -> tuple[float, dict[str, float]]:
    """One epoch; the training time per image and the seconds inside each callback's hooks."""
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from zflight.data import PackedImageNetDataModule
    from zflight.module import ImageClassifier

    seed_everything(0)
    dm = PackedImageNetDataModule(pack_root, crop_size=224, batch_size=args.batch_size,
                                  num_workers=args.loader_threads)
    module = ImageClassifier(
        arch=args.arch, num_classes=dm.num_classes, width=args.width, image_size=224, init="paper",
        channels_last=args.device != "cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    )
    callbacks = config_callbacks(args.num_images)
    spent = {type(cb).__name__: 0.0 for cb in callbacks}
    spent.update({"FeatureEvolution mining": 0.0, "TopActivationPanels mining": 0.0})
    device = torch.device(args.device)
    for cb in callbacks:
        for hook in HOOKS:
            setattr(cb, hook, _timed(getattr(cb, hook), spent, type(cb).__name__, device))
    timer = _EpochTimer(device, args.warmup)
    trainer = Trainer(
        max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision=args.precision, callbacks=[timer.callback, *callbacks],
        logger=TensorBoardLogger(log_dir, name="bench"), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    with timed_mining(spent, device):
        trainer.fit(module, datamodule=dm)
    return timer.per_image(), spent


def _timed(fn, spent: dict[str, float], name: str, device: torch.device):
    def wrapper(*a, **kw):
        start = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            spent[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="zfnet", choices=["zfnet", "alexnet_zf"])
    p.add_argument("--width", type=float, default=0.25, help="channel multiplier (1 = the paper's)")
    p.add_argument("--num-images", type=int, default=512, help="training images (all probed by FeatureEvolution)")
    p.add_argument("--num-val", type=int, default=128, help="validation images (mined by TopActivationPanels)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="untimed training batches")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--loader-threads", type=int, default=2, help="the pack loader's gathering threads")
    p.add_argument("--pack-workers", type=int, default=2, help="processes writing and packing the JPEGs")
    p.add_argument("--repeats", type=int, default=2, help="best of this many fits")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.num_images <= args.warmup * args.batch_size:
        p.error(f"--num-images must exceed --warmup x --batch-size ({args.warmup * args.batch_size}) "
                "so that some training batches are timed")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads")
    print(f"machine: {machine}; torch {torch.__version__}; {datetime.datetime.now():%Y-%m-%d %H:%M}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pack_root = make_pack(Path(tmp), args.num_images, args.num_val, args.classes, args.pack_workers)
        print(f"generated and packed {args.num_images} + {args.num_val} images in {time.perf_counter() - start:.0f} s")
        runs = [one_fit(args, pack_root, tmp) for _ in range(args.repeats)]
    train = min(r[0] for r in runs)
    names = ["FeatureEvolution", "TopActivationPanels", "FilterGrid", "OcclusionFigures"]
    # Each callback's fastest run, its total and its mining from that same run.
    fastest = {name: min((r[1] for r in runs), key=lambda spent: spent[name]) for name in names}
    best = {name: fastest[name][name] for name in names}
    mining = {name: fastest[name].get(f"{name} mining", 0.0) for name in names}
    n = args.num_images
    per_image = {"FeatureEvolution": mining["FeatureEvolution"] / n,
                 "TopActivationPanels": mining["TopActivationPanels"] / args.num_val,
                 "FilterGrid": 0.0, "OcclusionFigures": 0.0}
    fixed = {name: best[name] - mining[name] for name in names}
    images = {"FeatureEvolution": PROBE, "TopActivationPanels": IMAGENET_VAL, "FilterGrid": 0, "OcclusionFigures": 0}
    per_probe = per_image["FeatureEvolution"]
    epoch_small, epoch_imagenet = train * n, train * IMAGENET_TRAIN
    print()
    print(f"{args.arch} width {args.width}, 224 px, batch {args.batch_size}, {args.precision}, "
          f"{args.device}; best of {args.repeats} fits. Training: {1000 * train:.2f} ms per image; "
          f"probe mining: {1000 * per_probe:.2f} ms per image ({per_probe / train:.2f} of a training image)")
    print()
    print(f"| callback | here (s) | / training epoch of {n} images | mining (ms per image) | fixed (s) "
          f"| at ImageNet scale (s) | / ImageNet training epoch |")
    print("|---|---|---|---|---|---|---|")
    for name, cost in fixed.items():
        at_scale = cost + per_image[name] * images[name]
        print(f"| {name} | {best[name]:.2f} | {best[name] / epoch_small:.3f} | {1000 * per_image[name]:.2f} "
              f"| {cost:.2f} | {at_scale:.0f} | {at_scale / epoch_imagenet:.4f} |")
    print()
    print(f"training epoch here: {epoch_small:.1f} s; an ImageNet training epoch at this rate: "
          f"{epoch_imagenet / 3600:.2f} h (one process; with G GPUs, the training and the mining / G)")


if __name__ == "__main__":
    main()
