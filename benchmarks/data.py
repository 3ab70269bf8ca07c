"""Data pipeline throughput: JPEG folders + PIL workers against a pack read with GPU-side crops.

Measures images/s for (1) each loader alone, delivering ready batches on the device, (2) a full
ZFNet training step (forward, backward, SGD, the paper's filter renormalization) fed by each,
and (3) the same step on synthetic data already on the device: the ceiling a loader can reach.

With no ``--src`` it first writes ``--num-images`` JPEGs of ImageNet-like sizes (about 500x375 on
average, assorted aspect ratios, photo-like file sizes) into ``--work-dir`` and packs them with
``zflight.data.pack`` (the packing rate is printed too).

    python benchmarks/data.py                        # CPU, small: 320 images, quarter-width ZFNet
    python benchmarks/data.py --device cuda --num-images 20000 --width 1 --batch-size 256 \\
        --precision bf16-mixed --channels-last --compile --folder-workers 16   # one GPU

The table is printed with the machine and date; docs/benchmarks-data.md keeps the results.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zflight.data import ImageFolderDataModule, PackedImageNetDataModule
from zflight.data.pack import pack
from zflight.models import build_model, renormalize_filters

# (width/height, share): ImageNet is mostly 4:3 landscape, with portraits, squares and wide shots.
_ASPECTS = ((4 / 3, 0.6), (3 / 4, 0.2), (1.0, 0.1), (16 / 9, 0.1))


def _write_jpeg(job: tuple[Path, int]) -> int:
    """One photo-like JPEG: smooth colour fields plus grain, so it compresses like a photo."""
    path, seed = job
    rng = np.random.default_rng(seed)
    aspect = rng.choice([a for a, _ in _ASPECTS], p=[p for _, p in _ASPECTS])
    area = rng.normal(500 * 375, 60_000)
    w = int(np.clip(np.sqrt(max(area, 40_000) * aspect), 120, 1200))
    h = int(np.clip(w / aspect, 120, 1200))
    low = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = img + rng.normal(0, 14, (h, w, 3)).astype(np.int16)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def make_folder(root: Path, num_images: int, num_classes: int, workers: int) -> tuple[float, float]:
    """Write ``num_images`` train JPEGs (+1 val image per class); return (seconds, mean kB per file)."""
    jobs = []
    num_classes = max(1, min(num_classes, num_images // 10))  # at least 10 images per class
    for split, n in (("train", num_images), ("val", num_classes)):
        for i in range(n):
            d = root / split / f"n{i % num_classes:08d}"
            d.mkdir(parents=True, exist_ok=True)
            jobs.append((d / f"{split}_{i:07d}.JPEG", i + (10**7 if split == "val" else 0)))
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        sizes = pool.map(_write_jpeg, jobs, chunksize=64)
    return time.perf_counter() - start, float(np.mean(sizes)) / 1e3


def _cycle(make_iter: Callable[[], Iterable]) -> Iterator:
    while True:
        yield from make_iter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(batches: Iterator, consume: Callable, warmup: int, steps: int, device: torch.device) -> float:
    """Images/s over ``steps`` batches after ``warmup`` batches."""
    for _ in range(warmup):
        consume(*next(batches))
    _sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(batches)
        consume(x, y)
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - start)


def folder_batches(dm: ImageFolderDataModule, device: torch.device) -> Iterator:
    """Batches of the folder data module (decoded, cropped, normalized by PIL workers), on the device."""
    for x, y in _cycle(dm.train_dataloader):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def pack_batches(dm: PackedImageNetDataModule, device: torch.device) -> Iterator:
    """Batches of the pack data module: uint8 rows moved to the device, cropped there."""
    loader = dm.train_dataloader()
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            moved = type(batch)(*(t.to(device, non_blocking=True) for t in batch))
            yield dm.on_after_batch_transfer(moved, 0)
        epoch += 1


def synthetic_batches(args: argparse.Namespace, device: torch.device) -> Iterator:
    """The same random batch again and again, already on the device."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    while True:
        yield x, y


def training_step(args: argparse.Namespace, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A plain ZFNet training step with the paper's SGD and filter renormalization."""
    torch.manual_seed(0)
    model = build_model("zfnet", num_classes=args.num_classes, width=args.width, image_size=args.crop).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    net = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed" else nullcontext()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        renormalize_filters(model, 0.1)

    return step


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu}, {cores} CPU cores available{gpu}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--src", type=Path, default=None, help="an ImageNet-style folder (default: generate one)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where generated JPEGs and the pack go")
    parser.add_argument("--num-images", type=int, default=320, help="JPEGs to generate")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="pack image size (the paper's 256)")
    parser.add_argument("--crop", type=int, default=224, help="crop fed to the network (the paper's 224)")
    parser.add_argument("--width", type=float, default=0.25, help="ZFNet channel multiplier (1 = the paper's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--folder-workers", type=int, default=None, help="PIL DataLoader workers (default: all cores)")
    parser.add_argument("--pack-threads", type=int, default=4, help="gathering threads of the pack loader")
    parser.add_argument("--pack-workers", type=int, default=None, help="packing processes (default: all cores)")
    parser.add_argument("--steps", type=int, default=6, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder and pack")
    args = parser.parse_args()
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    folder_workers = cores if args.folder_workers is None else args.folder_workers
    pack_workers = cores if args.pack_workers is None else args.pack_workers

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="zflight-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    notes = []
    try:
        src = args.src
        if src is None:
            src = work / "jpeg"
            if not (src / "train").is_dir():
                seconds, kb = make_folder(src, args.num_images, args.num_classes, pack_workers)
                notes.append(f"generated {args.num_images} JPEGs (mean {kb:.0f} kB) in {seconds:.1f} s")
        dst = work / f"pack{args.size}"
        start = time.perf_counter()
        manifest = pack(src, dst, size=args.size, workers=pack_workers, progress=False)
        seconds = time.perf_counter() - start
        n = sum(s["listed"] for s in manifest["splits"].values())
        notes.append(
            f"packed {n} images at {args.size} px in {seconds:.1f} s with {pack_workers} processes "
            f"({n / seconds:.0f} images/s, {n / seconds / pack_workers:.0f} per process; a rerun only verifies)"
        )
        args.num_classes = manifest["classes"]

        folder = ImageFolderDataModule(
            src,
            resize=args.size,
            crop_size=args.crop,
            batch_size=args.batch_size,
            num_workers=folder_workers,
            pin_memory=device.type == "cuda",
        )
        folder.setup("fit")
        packed = PackedImageNetDataModule(
            dst, crop_size=args.crop, batch_size=args.batch_size, num_workers=args.pack_threads
        )
        packed.setup("fit")
        step = training_step(args, device)

        def nothing(x: torch.Tensor, y: torch.Tensor) -> None:
            pass

        w, s = args.warmup, args.steps
        t = torch.get_num_threads()
        # The CPU cores a path keeps busy: loader processes/threads, plus torch's threads where the
        # main process computes (the step, or the pack's crops when the device is the CPU).
        crop_cores = 1 if device.type == "cpu" else 0
        # The synthetic run goes first so that torch.compile's compilation is not timed anywhere.
        rows = [
            (
                "training step, synthetic data on the device (ceiling)",
                _rate(synthetic_batches(args, device), step, w + 3, s, device),
                0,
                t,
            ),
            (
                "folder + PIL workers, loader alone",
                _rate(folder_batches(folder, device), nothing, w, s, device),
                folder_workers,
                folder_workers,
            ),
            (
                "pack loader + crops on the device, loader alone",
                _rate(pack_batches(packed, device), nothing, w, s, device),
                args.pack_threads,
                args.pack_threads + crop_cores,
            ),
            (
                "training step fed by folder + PIL workers",
                _rate(folder_batches(folder, device), step, w, s, device),
                folder_workers,
                folder_workers + t,
            ),
            (
                "training step fed by the pack loader",
                _rate(pack_batches(packed, device), step, w, s, device),
                args.pack_threads,
                args.pack_threads + t,
            ),
        ]
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    ceiling = rows[0][1]
    print(f"# data pipeline throughput, {date.today()}, {_machine(device)}, device {device}")
    print(
        f"# zfnet width {args.width}, pack {args.size} px, crop {args.crop}, batch {args.batch_size}, "
        f"{args.precision}, channels_last={args.channels_last}, compile={args.compile}, "
        f"{args.steps} timed batches after {args.warmup} (torch threads: {torch.get_num_threads()})"
    )
    for note in notes:
        print(f"# {note}")
    print("| path | loader workers | CPU cores busy | images/s | images/s per busy core | vs ceiling |")
    print("|---|---|---|---|---|---|")
    for name, rate, workers, busy in rows:
        print(f"| {name} | {workers} | {busy} | {rate:.1f} | {rate / busy:.1f} | {rate / ceiling:.2f} |")


if __name__ == "__main__":
    main()
