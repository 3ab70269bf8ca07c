"""Training throughput: zflight's LightningModule + Trainer against a plain PyTorch loop.

Same model, same data (pre-rendered shapes in memory), same batches, same optimizer, same
filter renormalization after each step; only the driver differs. Runs alternate (plain,
Lightning, plain, Lightning, ...) so that noise from a shared machine hits both alike, and the
median of each is reported.

    python benchmarks/train.py                      # CPU, quickstart model (quarter-width ZFNet, 96 px)
    python benchmarks/train.py --device cuda --width 1 --image-size 224 --batch-size 256 \
        --precision bf16-mixed --channels-last      # the paper's network on a GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from zflight.models import renormalize_filters
from zflight.module import ImageClassifier


def _data(n: int, size: int, classes: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


def _optimizer(params):
    return torch.optim.AdamW(params, lr=1e-3)


def plain_loop(args, loader) -> float:
    """Images/s of a hand-written loop over the same module's network."""
    torch.manual_seed(0)
    module = _module(args)
    model = module.model.to(args.device).train()
    opt = _optimizer(model.parameters())
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == args.warmup:
            _sync(args.device)
            start, seen = time.perf_counter(), 0
        x, y = x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        renormalize_filters(model, 0.1)
        seen += len(x)
    _sync(args.device)
    return seen / (time.perf_counter() - start)


class _Timer(Callback):
    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start, self.seen = None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start, self.seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is not None:
            self.seen += len(batch[0])

    def on_train_end(self, trainer, module):
        _sync(self.device)
        self.rate = self.seen / (time.perf_counter() - self.start)


def lightning_fit(args, loader, logger_dir: str | None) -> float:
    """Images/s of Trainer.fit on zflight's ImageClassifier (with its metrics and logging)."""
    torch.manual_seed(0)
    module = _module(args)
    timer = _Timer(args.warmup, args.device)
    if logger_dir:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(logger_dir, name="bench")
    else:
        logger = False
    trainer = Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        max_epochs=1,
        precision=args.precision,
        logger=logger,
        log_every_n_steps=25,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, loader)
    return timer.rate


def _module(args) -> ImageClassifier:
    return ImageClassifier(
        arch="zfnet",
        num_classes=10,
        width=args.width,
        image_size=args.image_size,
        init="kaiming",
        optimizer=_optimizer,
        channels_last=args.channels_last,
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps (past the first logging step, whose lazy imports would be timed otherwise)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    import tempfile

    n = (args.steps + args.warmup) * args.batch_size
    loader = DataLoader(_data(n, args.image_size, 10), batch_size=args.batch_size, shuffle=False, drop_last=True)
    plain, bare, logged = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            plain.append(plain_loop(args, loader))
            bare.append(lightning_fit(args, loader, None))
            logged.append(lightning_fit(args, loader, tmp))
    p, b, lg = (statistics.median(v) for v in (plain, bare, logged))
    print(f"# training throughput, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}")
    print(f"# zfnet width {args.width} at {args.image_size} px, batch {args.batch_size}, {args.precision}, "
          f"channels_last={args.channels_last}, {args.steps} timed steps x {args.repeats} repeats (median)")
    print("| driver | images/s | vs plain loop |")
    print("|---|---|---|")
    print(f"| plain PyTorch loop | {p:.1f} | 1.000 |")
    print(f"| zflight ImageClassifier + Trainer, no logger | {b:.1f} | {b / p:.3f} |")
    print(f"| zflight ImageClassifier + Trainer, TensorBoard logger | {lg:.1f} | {lg / p:.3f} |")


if __name__ == "__main__":
    main()
