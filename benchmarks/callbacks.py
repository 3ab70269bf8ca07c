"""What the visualization costs: top-9 mining vs a forward pass, and a fit with vs without callbacks.

Usage::

    python benchmarks/callbacks.py [--images 512] [--train_size 2000] [--val_size 500] \\
        [--epochs 6] [--width 0.25] [--fit_repeats 3] [--threads 1]

(a) For each layer conv1 … conv5 of ZFNet (quickstart width, 64 px), the time of
    ``top_activations(k=9)`` for *all* channels over ``--images`` shape images, against one
    plain forward pass over the same images up to that layer (same batch size, same
    DataLoader): the ratio is the price of the streaming top-k bookkeeping.
(b) A short quickstart-like fit (AdamW, Kaiming init, shapes data) with and without the
    callbacks the quickstart turns on (``FeatureEvolution`` on conv1 … conv5 with 8 maps and
    a 512-image probe, ``TopActivationPanels`` at the end of training, ``FilterGrid``), same
    seed; wall time and ratio. Images are rendered beforehand so neither run pays for it.

Prints a Markdown table with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time

import torch
from torch.utils.data import DataLoader


def _mining(width: float, n_images: int, batch_size: int, repeats: int) -> list[tuple[str, float, float]]:
    from zflight import zfnet
    from zflight.analysis import top_activations
    from zflight.attribution import forward_to, resolve_layer
    from zflight.data import ShapesDataset

    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=width, image_size=64, init="kaiming").eval()
    ds = ShapesDataset(n_images, image_size=64, seed=0).render_all(progress=False)
    rows = []
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        _, module = resolve_layer(model, layer)

        def forward_only() -> None:
            with torch.no_grad():
                for x, _ in DataLoader(ds, batch_size=batch_size):
                    forward_to(model, module, x)

        def mine() -> None:
            top_activations(model, ds, layer, k=9, batch_size=batch_size, progress=False)

        t_fwd = min(_time(forward_only) for _ in range(repeats))
        t_top = min(_time(mine) for _ in range(repeats))
        rows.append((layer, t_fwd, t_top))
    return rows


def _fit(width: float, train_size: int, val_size: int, epochs: int, with_callbacks: bool, dm) -> tuple[float, float]:
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from zflight.callbacks import FeatureEvolution, FilterGrid, TopActivationPanels
    from zflight.module import ImageClassifier

    seed_everything(0)
    module = ImageClassifier(
        arch="zfnet", num_classes=10, width=width, image_size=64, init="kaiming",
        optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.05),
    )
    callbacks = (
        [FeatureEvolution(maps=8, probe_size=512), TopActivationPanels(maps=8), FilterGrid()]
        if with_callbacks else []
    )
    spent = [0.0]
    for cb in callbacks:  # time spent inside the callbacks' hooks, measured within the same run
        for hook in ("on_train_start", "on_validation_end", "on_train_epoch_end", "on_train_end"):
            setattr(cb, hook, _timed(getattr(cb, hook), spent))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks,
            logger=TensorBoardLogger(tmp, name="bench"), enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=50,
        )
        return _time(lambda: trainer.fit(module, datamodule=dm)), spent[0]


def _timed(fn, spent: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    return wrapper


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=512, help="images mined in (a)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="best of this many timings in (a)")
    p.add_argument("--train_size", type=int, default=2000)
    p.add_argument("--val_size", type=int, default=500)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--fit_repeats", type=int, default=3, help="best of this many fits in (b)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from zflight.data import ShapesDataModule

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {platform.python_version()}; {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print()
    print(f"(a) top-9 of all channels over {args.images} images vs one forward pass to the layer "
          f"(ZFNet width {args.width}, 64 px, batch {args.batch_size}, best of {args.repeats})")
    print()
    print("| layer | forward to layer (s) | top_activations k=9 (s) | ratio |")
    print("|---|---|---|---|")
    for layer, t_fwd, t_top in _mining(args.width, args.images, args.batch_size, args.repeats):
        print(f"| {layer} | {t_fwd:.3f} | {t_top:.3f} | {t_top / t_fwd:.2f} |")

    dm = ShapesDataModule(train_size=args.train_size, val_size=args.val_size, test_size=10, batch_size=64)
    dm.setup("fit")
    dm.train_dataset.render_all(progress=False)
    dm.val_dataset.render_all(progress=False)
    # Alternate the two runs and keep each one's best: on a shared machine, load from other
    # processes comes and goes, and only the fastest run of each is free of it.
    plain_times, watched_runs = [], []
    for _ in range(args.fit_repeats):
        plain_times.append(_fit(args.width, args.train_size, args.val_size, args.epochs, False, dm)[0])
        watched_runs.append(_fit(args.width, args.train_size, args.val_size, args.epochs, True, dm))
    plain = min(plain_times)
    watched, inside = min(watched_runs)
    print()
    print(f"(b) fit, {args.epochs} epochs, {args.train_size} train / {args.val_size} val images, "
          f"best of {args.fit_repeats} alternating runs each, "
          "quickstart callbacks (FeatureEvolution conv1-5 × 8 maps, probe 512; TopActivationPanels "
          "conv1-5 × 8 maps at the end; FilterGrid)")
    print()
    print("| run | wall time (s) | ratio | time inside the callbacks (s) | added, measured inside the run |")
    print("|---|---|---|---|---|")
    print(f"| without callbacks | {plain:.1f} | 1.00 | | |")
    print(f"| with callbacks | {watched:.1f} | {watched / plain:.2f} | {inside:.1f} | "
          f"{inside / (watched - inside):.1%} |")


if __name__ == "__main__":
    main()
