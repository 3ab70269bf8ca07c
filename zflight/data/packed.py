"""Reading a pack (:mod:`zflight.data.pack`) at GPU speed: uint8 batches in, crops made on the device.

The CPU only reads whole ``[size, size, 3]`` uint8 rows of randomly chosen images into pinned
memory (threads, one ``preadv`` per image straight from the pack's file); the copy to
the GPU is non-blocking; there, :func:`crop_flip_normalize` cuts every sample's own crop (random
offset and flip for training, the centre for validation, the paper's ten crops for testing) with
one gather, and normalizes. The random draws are made on the CPU from ``(seed, epoch)``, so the
same seed gives the same crops on any device and any number of processes.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from zflight.data._base import (
    ClassificationDataModule,
    LoaderPosition,
    SkippablePass,
    _rank_world,
)
from zflight.data.datamodules import IMAGENET_MEAN, IMAGENET_STD, _check_int, _mean_std
from zflight.data.pack import read_manifest

__all__ = [
    "PackedImageNetDataModule",
    "PackedBatch",
    "PackedImages",
    "PackedLoader",
    "PackedSampler",
    "crop_flip_normalize",
]

CropMode = Literal["random", "center", "ten"]


class PackedBatch(NamedTuple):
    """A batch as it leaves the CPU: whole pack rows plus where each sample is to be cropped.

    ``top``, ``left`` and ``flip`` are ``[B]`` (one crop per sample) or ``[B, K]`` (K crops per
    sample, e.g. the 10 test crops).
    """

    images: torch.Tensor  #: uint8 ``[B, size, size, 3]`` (RGB rows of the pack)
    labels: torch.Tensor  #: int64 ``[B]``
    top: torch.Tensor  #: int64, top row of each crop
    left: torch.Tensor  #: int64, left column of each crop (in the unflipped image)
    flip: torch.Tensor  #: bool, mirror the crop left-right
    index: torch.Tensor  #: int64 ``[B]``, the rows of the pack (for tracing a sample back to its file)


def crop_flip_normalize(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    crop_size: int,
    mean: torch.Tensor | tuple[float, float, float] = IMAGENET_MEAN,
    std: torch.Tensor | tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """Each sample's own crop (and flip) of a uint8 batch, as normalized float32, in one gather.

    A batched torchvision v2 transform would draw one crop and one flip for the whole batch; here
    the offsets are per sample (or per sample and crop), turned into row and column indices and
    gathered with advanced indexing, which runs as one kernel on the GPU.

    Args:
        images: uint8 ``[B, H, W, 3]`` (channels last, as stored in a pack).
        top: int ``[B]`` or ``[B, K]``: first row of each crop.
        left: int, same shape as ``top``: first column of each crop in the unflipped image.
        flip: bool, same shape as ``top``: mirror the crop left-right.
        crop_size: side of the square crops.
        mean: per-channel mean of pixels in [0, 1].
        std: per-channel std of pixels in [0, 1].

    Returns:
        float32 ``[B, 3, crop, crop]`` (or ``[B, K, 3, crop, crop]``), ``(x / 255 - mean) / std``,
        in channels-last memory layout (what the channels-last networks want, no copy).

    Example:
        >>> x = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).view(2, 4, 4, 3)
        >>> out = crop_flip_normalize(x, torch.tensor([0, 2]), torch.tensor([1, 0]),
        ...                           torch.tensor([False, True]), 2, mean=(0, 0, 0), std=(1 / 255,) * 3)
        >>> out[0, 0].tolist(), out[1, 0].tolist()
        ([[3.0, 6.0], [15.0, 18.0]], [[75.0, 72.0], [87.0, 84.0]])
    """
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    b, h, w, _ = images.shape
    if top.shape != left.shape or top.shape != flip.shape or top.shape[0] != b or top.dim() not in (1, 2):
        raise ValueError(
            f"top, left and flip must all be [B] or [B, K] with B={b}, got {tuple(top.shape)}, "
            f"{tuple(left.shape)}, {tuple(flip.shape)}"
        )
    if not 1 <= crop_size <= min(h, w):
        raise ValueError(f"crop_size must be in [1, {min(h, w)}] for {h}x{w} images, got {crop_size}")
    device = images.device
    top, left, flip = top.to(device), left.to(device), flip.to(device, torch.bool)
    squeeze = top.dim() == 1
    if squeeze:
        top, left, flip = top[:, None], left[:, None], flip[:, None]
    ar = torch.arange(crop_size, device=device)
    rows = top[..., None] + ar  # [B, K, c]
    # A flipped crop reads its columns right to left.
    cols = torch.where(flip[..., None], left[..., None] + (crop_size - 1) - ar, left[..., None] + ar)
    batch = torch.arange(b, device=device).view(b, 1, 1, 1)
    out = images[batch, rows[..., :, None], cols[..., None, :]]  # [B, K, c, c, 3], still uint8
    # [B, K, c, c, 3] -> [B, K, 3, c, c] is a view: channels-last strides for free.
    out = out.permute(0, 1, 4, 2, 3)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    # (x/255 - mean)/std as one multiply-add: x * scale - shift.
    out = out.float().mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)
    return out[:, 0] if squeeze else out


def _ten_crop_offsets(size: int, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets of torchvision's TenCrop: 4 corners + centre, then the same on the flipped image."""
    c = int(round((size - crop) / 2.0))  # torchvision's centre_crop rounding
    m = size - crop
    top = np.array([0, 0, m, m, c] * 2)
    left5 = np.array([0, m, 0, m, c])
    # A crop at column l of the flipped image is the mirrored crop at column m - l of the original.
    left = np.concatenate([left5, m - left5])
    flip = np.array([False] * 5 + [True] * 5)
    return top, left, flip


class PackedImages(Dataset):
    """One split of a pack as a map-style data set: item ``i`` is ``(centre crop, label)``.

    What the visualization callbacks and analyses read image by image (the fast training path
    stays :class:`PackedLoader`): the ``i``-th kept row of the split (rows of unreadable files
    are skipped), its centre ``crop_size`` crop, normalized like the training batches, as float32
    ``[3, crop, crop]``. Deterministic: no random crop or flip, whichever split it reads. The
    arrays are memory-mapped on first use in each process, so a copy sent to a DataLoader worker
    carries the path, not the pixels.

    Args:
        root: the pack folder.
        split: ``"train"``, ``"val"``, ... (a split of the pack).
        crop_size: side of the centre crop, at most the pack's image size.
        mean: per-channel mean of pixels in [0, 1].
        std: per-channel std of pixels in [0, 1].

    Raises:
        FileNotFoundError: no finished pack in ``root``, or it lacks ``split``.
        ValueError: ``crop_size`` larger than the pack's images.

    Example:
        >>> ds = PackedImages("/data/imagenet-zf", "val", crop_size=224)  # doctest: +SKIP
        >>> x, y = ds[0]; x.shape, ds.classes[y]  # doctest: +SKIP
        (torch.Size([3, 224, 224]), 'n01440764')
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        crop_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.root = Path(root).expanduser()
        manifest = read_manifest(self.root)
        info = manifest["splits"].get(split)
        if info is None:
            raise FileNotFoundError(
                f"the pack in {self.root} has no {split!r} split (it has {sorted(manifest['splits'])})"
            )
        self.size = int(manifest["size"])
        _check_int("crop_size", crop_size, 1)
        if crop_size > self.size:
            raise ValueError(f"crop_size ({crop_size}) exceeds the {self.size} px images of the pack in {self.root}")
        self.split, self.crop_size, self._files = split, crop_size, (info["images"], info["labels"])
        self.classes: list[str] = json.loads((self.root / "classes.json").read_text())
        self._mean, self._std = _mean_std(mean, std)
        labels = np.load(self.root / info["labels"], mmap_mode="r")
        self._rows = np.flatnonzero(labels >= 0)  # -1: an unreadable file's empty row
        self._labels = np.asarray(labels[self._rows], dtype=np.int64)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for the {len(self)} images of the {self.split!r} split")
        if self._images is None:
            self._images = np.load(self.root / self._files[0], mmap_mode="r")
        c = round((self.size - self.crop_size) / 2.0)  # torchvision's centre_crop rounding
        row = torch.from_numpy(np.ascontiguousarray(self._images[self._rows[index], c : c + self.crop_size, c : c + self.crop_size]))
        x = row.permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self._mean).view(3, 1, 1)
        std = torch.tensor(self._std).view(3, 1, 1)
        return (x - mean) / std, int(self._labels[index])

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization of ``ds[i][0]`` (or a batch of them) for display, clamped to [0, 1]."""
        mean = torch.tensor(self._mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self._std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)

    def __getstate__(self) -> dict[str, Any]:
        # A worker process maps the file itself: pickling a memory map would copy its pixels.
        return {**self.__dict__, "_images": None}


class PackedSampler(SkippablePass):
    """Which pack rows, and which crop of each, one process reads per batch in one epoch.

    Each epoch draws, from ``(seed, epoch)`` alone, one permutation of all kept rows and each row's
    crop offsets and flip; the permutation is then split across the ``world_size`` processes the
    way :class:`~torch.utils.data.distributed.DistributedSampler` does (rank ``r`` takes every
    ``world_size``-th position starting at ``r``; the end is padded with the first positions so
    that all ranks take the same number of batches). So every image is read once per epoch across
    ranks (plus at most ``world_size - 1`` repeats), and a sample's crop does not depend on the
    number of processes. Lightning calls :meth:`set_epoch` at every epoch.

    Args:
        rows: the pack rows to read (those of readable files).
        batch_size: images per batch in this process.
        image_size: side of the stored images.
        crop_size: side of the crops.
        mode: ``random`` (training), ``center`` or ``ten`` (the paper's ten test crops).
        shuffle: a new order every epoch (else the order of ``rows``).
        seed: seed of the permutation and crops.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop this process's last batch when it is incomplete.

    Example:
        >>> s = PackedSampler(np.arange(10), batch_size=4, image_size=8, crop_size=6, mode="random",
        ...                   rank=1, world_size=2)
        >>> [len(b[0]) for b in s]
        [4, 1]
    """

    def __init__(
        self,
        rows: np.ndarray,
        *,
        batch_size: int,
        image_size: int,
        crop_size: int,
        mode: CropMode,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        _check_int("batch_size", batch_size, 1)
        _check_int("world_size", world_size, 1)
        if not (isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must be an int in [0, {world_size - 1}], got {rank!r}")
        if mode not in ("random", "center", "ten"):
            raise ValueError(f"mode must be 'random', 'center' or 'ten', got {mode!r}")
        if not 1 <= crop_size <= image_size:
            raise ValueError(f"crop_size must be in [1, {image_size}] (the pack's image size), got {crop_size}")
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise ValueError("rows is empty: the split holds no readable image")
        self.batch_size, self.image_size, self.crop_size, self.mode = batch_size, image_size, crop_size, mode
        self.shuffle, self.seed, self.rank, self.world_size, self.drop_last = shuffle, seed, rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0  # where the current pass started (after a skip)
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation and crops of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this process reads per epoch (all ranks read the same number)."""
        return math.ceil(len(self.rows) / self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(rows, top, left, flip)`` per batch, rows sorted (reads in file order)."""
        n = len(self.rows)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        span = self.image_size - self.crop_size + 1
        if self.mode == "random":
            # Drawn for every kept row, indexed by row position: independent of the rank split.
            tops, lefts, flips = rng.integers(0, span, n), rng.integers(0, span, n), rng.random(n) < 0.5
        total = self.num_samples * self.world_size
        order = np.concatenate([order, order[: total - n]]) if total > n else order
        mine = order[self.rank : total : self.world_size]
        start = self._pass_start(len(self))
        for b in range(start, len(self)):
            pos = np.sort(mine[b * self.batch_size : (b + 1) * self.batch_size])  # rows ascend with pos
            k = len(pos)
            if self.mode == "random":
                top, left, flip = tops[pos], lefts[pos], flips[pos]
            elif self.mode == "center":
                c = int(round((self.image_size - self.crop_size) / 2.0))
                top, left, flip = np.full(k, c), np.full(k, c), np.zeros(k, dtype=bool)
            else:
                t, l, f = _ten_crop_offsets(self.image_size, self.crop_size)
                top, left, flip = np.tile(t, (k, 1)), np.tile(l, (k, 1)), np.tile(f, (k, 1))
            yield self.rows[pos], top, left, flip


class PackedLoader(LoaderPosition):
    """Iterable of :class:`PackedBatch` (or of ``(x, y)`` with a ``transform``) from one split of a pack.

    Worker threads read each batch's rows into a fresh (pinned, when ``pin_memory``) tensor: one
    copy from the page cache or disk, no pickling, no worker processes. Rows of a memory-mapped
    pack are read with ``os.preadv`` straight into that tensor (about 5x faster than gathering
    from the mapping, which takes a page fault per 4 kB; the GIL is released while reading).
    ``sampler`` has ``set_epoch``, which Lightning calls.

    Args:
        images: uint8 ``[N, size, size, 3]`` array; a ``numpy.memmap`` (``numpy.load(path,
            mmap_mode="r")``) is read from its file.
        labels: int64 ``[N]`` array.
        sampler: the rows and crops of each batch.
        pin_memory: gather into page-locked memory (for non-blocking copies to a GPU).
        num_workers: gathering threads (0: in the iterating thread).
        prefetch: batches gathered ahead per worker.
        transform: applied to each :class:`PackedBatch` in the worker (e.g. CPU-side cropping);
            its result is yielded instead.

    Example:
        >>> loader = PackedLoader(images, labels, sampler, pin_memory=True)  # doctest: +SKIP
        >>> batch = next(iter(loader))  # doctest: +SKIP
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        sampler: PackedSampler,
        *,
        pin_memory: bool = False,
        num_workers: int = 4,
        prefetch: int = 2,
        transform: Callable[[PackedBatch], Any] | None = None,
    ) -> None:
        _check_int("num_workers", num_workers, 0)
        _check_int("prefetch", prefetch, 1)
        self.images, self.labels, self.sampler = images, labels, sampler
        # DataLoader's attribute, which Lightning's checks read next to ``sampler``: batches come
        # from ``sampler`` itself.
        self.batch_sampler = None
        self.pin_memory, self.num_workers, self.prefetch, self.transform = pin_memory, num_workers, prefetch, transform
        self._handed_out = 0  # batches of the current pass yielded to the consumer

    def __len__(self) -> int:
        return len(self.sampler)

    def _gather(self, plan: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], fd: int | None) -> Any:
        rows, top, left, flip = plan
        # With a CPU-side transform, what is sent is its output: pin that instead.
        pin = self.pin_memory and self.transform is None
        out = torch.empty((len(rows), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        self._read_rows(rows, out.numpy(), fd)
        small = [torch.from_numpy(np.ascontiguousarray(a)) for a in (self.labels[rows], top, left, flip, rows)]
        if pin:
            # Pageable sources would make the non-blocking copies synchronous (a stream sync).
            small = [t.pin_memory() for t in small]
        batch = PackedBatch(out, *small)
        if self.transform is None:
            return batch
        result = self.transform(batch)
        if self.pin_memory:
            result = tuple(t.pin_memory() for t in result)
        return result

    def _read_rows(self, rows: np.ndarray, out: np.ndarray, fd: int | None) -> None:
        if fd is None:
            np.take(self.images, rows, axis=0, out=out)
            return
        row_bytes = out[0].nbytes
        for j, r in enumerate(rows.tolist()):
            view = memoryview(out[j]).cast("B")
            pos, done = self.images.offset + r * row_bytes, 0
            while done < row_bytes:  # a read may return less than asked
                got = os.preadv(fd, [view[done:]], pos + done)
                if got == 0:
                    raise OSError(f"{self.images.filename} ends before row {r}: the pack is truncated (run verify)")
                done += got

    def __iter__(self) -> Iterator[Any]:
        self._handed_out = 0
        self.sampler.start_batch = 0  # set again by the sampler when its pass starts
        plans = iter(self.sampler)
        path = getattr(self.images, "filename", None)
        # One descriptor per iteration, shared by the threads (preadv has no file position).
        fd = os.open(path, os.O_RDONLY) if path is not None and hasattr(os, "preadv") else None
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="zflight-pack") if self.num_workers else None
        queue: deque[Future] = deque()
        try:
            if pool is None:
                for plan in plans:
                    batch = self._gather(plan, fd)
                    self._handed_out += 1  # counted before the consumer sees it (a checkpoint may follow)
                    yield batch
                return
            for plan in plans:
                queue.append(pool.submit(self._gather, plan, fd))
                if len(queue) >= self.num_workers * self.prefetch:
                    batch = queue.popleft().result()
                    self._handed_out += 1
                    yield batch
            while queue:
                batch = queue.popleft().result()
                self._handed_out += 1
                yield batch
        finally:
            # Also when the consumer stops early (limit_train_batches, an exception).
            for f in queue:
                f.cancel()
            if pool is not None:
                pool.shutdown(wait=True)
            if fd is not None:
                os.close(fd)


class PackedImageNetDataModule(ClassificationDataModule):
    """ImageNet from a pack made by ``python -m zflight pack``, with crops made on the GPU.

    Every process (DDP rank) reads its own share of a shuffled epoch (see :class:`PackedSampler`),
    as uint8 rows gathered by threads into pinned memory and copied without blocking; then, in
    :meth:`on_after_batch_transfer`, on the device and on the whole batch, each sample gets its
    own crop, flip and normalization (:func:`crop_flip_normalize`). Training: random
    ``crop_size`` crop and horizontal flip of the stored ``size``×``size`` image, as in the paper
    (and as :class:`~zflight.data.ImageFolderDataModule` does on the CPU); validation: the centre
    crop; test: the centre crop or the 4 corner + centre crops and their flips (``test_crops=10``,
    batches ``[B, 10, 3, crop, crop]``, TenCrop's order). After :meth:`setup`, ``train_dataset``
    and ``val_dataset`` hold the same splits image by image (:class:`PackedImages`, centre
    crops), for what mines or draws single images during training (the visualization callbacks).

    Args:
        root: the pack folder (``dst`` of ``python -m zflight pack``).
        crop_size: side of the crops fed to the network; at most the pack's size (224 for a
            256 pack, the paper's; keep the ratio 0.875 for smaller packs, e.g. 112 for 128).
        batch_size: images per batch (per process under DDP).
        test_crops: 1 (centre crop) or 10 (the paper's corners + centre, with flips).
        test_split: split of the pack used by ``test``/``predict``.
        device_augment: crop, flip and normalize on the device after the transfer (the fast
            path); False does the same in the CPU worker threads, which then send float crops.
        num_workers: gathering threads per process.
        prefetch: batches gathered ahead per thread.
        pin_memory: page-locked batches; None: when CUDA is available.
        drop_last: drop each process's last incomplete training batch (e.g. for torch.compile
            without dynamic shapes).
        seed: seed of the epoch permutations and the random crops.
        mean: per-channel mean of pixels in [0, 1] (ImageNet's by default).
        std: per-channel std of pixels in [0, 1] (ImageNet's by default).

    Raises:
        FileNotFoundError: ``root`` holds no finished pack (the message says how to make one);
            at ``setup()``, a split it lacks.
        ValueError: a bad argument, e.g. ``crop_size`` larger than the pack's images.

    Example:
        >>> dm = PackedImageNetDataModule("/data/imagenet-zf", test_crops=10)  # doctest: +SKIP
        >>> dm.num_classes, dm.image_size  # doctest: +SKIP
        (1000, 224)
    """

    def __init__(
        self,
        root: str | Path,
        *,
        crop_size: int = 224,
        batch_size: int = 128,
        test_crops: int = 1,
        test_split: str = "val",
        device_augment: bool = True,
        num_workers: int = 4,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        drop_last: bool = False,
        seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        _check_int("crop_size", crop_size, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        _check_int("prefetch", prefetch, 1)
        _check_int("seed", seed, 0)
        if test_crops not in (1, 10):
            raise ValueError(f"test_crops must be 1 or 10, got {test_crops!r}")
        self._mean, self._std = _mean_std(mean, std)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.manifest = read_manifest(self.root)
        self.pack_size: int = int(self.manifest["size"])
        if crop_size > self.pack_size:
            raise ValueError(
                f"crop_size ({crop_size}) exceeds the {self.pack_size} px images of the pack in {self.root}; "
                f"use crop_size <= {self.pack_size} (e.g. {round(self.pack_size * 224 / 256)})"
            )
        self._classes: list[str] = json.loads((self.root / "classes.json").read_text())
        self.crop_size, self.batch_size, self.test_crops, self.test_split = (
            crop_size,
            batch_size,
            test_crops,
            test_split,
        )
        self.device_augment, self.num_workers, self.prefetch = device_augment, num_workers, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.drop_last, self.seed = drop_last, seed
        self._splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    #: The training and validation splits as :class:`PackedImages` (centre crops, image by
    #: image), made by :meth:`setup`, for the visualization callbacks; training reads batches.
    train_dataset: PackedImages | None = None
    val_dataset: PackedImages | None = None

    @property
    def image_size(self) -> int:
        """Side of the images fed to the network (``crop_size``)."""
        return self.crop_size

    def _open(self, split: str) -> None:
        if split in self._splits:
            return
        info = self.manifest["splits"].get(split)
        if info is None:
            raise FileNotFoundError(
                f"the pack in {self.root} has no {split!r} split (it has {sorted(self.manifest['splits'])}); "
                f"pack a source folder that holds {split}/<class>/"
            )
        images = np.load(self.root / info["images"], mmap_mode="r")
        labels = np.load(self.root / info["labels"], mmap_mode="r")
        rows = np.flatnonzero(labels >= 0)  # -1: an unreadable file's empty row
        self._splits[split] = (images, labels, rows)

    def setup(self, stage: str | None = None) -> None:
        """Map the splits that ``stage`` needs (all when ``stage`` is None).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None.

        Raises:
            FileNotFoundError: the pack lacks a needed split.
        """
        if stage in (None, "fit"):
            self._open("train")
            if self.train_dataset is None:
                self.train_dataset = self._images("train")
        if stage in (None, "fit", "validate"):
            self._open("val")
            if self.val_dataset is None:
                self.val_dataset = self._images("val")
        if stage in (None, "test", "predict"):
            self._open(self.test_split)

    def _images(self, split: str) -> PackedImages:
        return PackedImages(self.root, split, crop_size=self.crop_size, mean=self._mean, std=self._std)

    def _loader(self, split: str, mode: CropMode, shuffle: bool, drop_last: bool = False) -> PackedLoader:
        if split not in self._splits:
            raise RuntimeError(f"split {split!r} is not set up yet: call setup() first")
        images, labels, rows = self._splits[split]
        rank, world = _rank_world(self)
        sampler = PackedSampler(
            rows,
            batch_size=self.batch_size,
            image_size=self.pack_size,
            crop_size=self.crop_size,
            mode=mode,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
            drop_last=drop_last,
        )
        return PackedLoader(
            images,
            labels,
            sampler,
            pin_memory=self.pin_memory,
            num_workers=self.num_workers,
            prefetch=self.prefetch,
            transform=None if self.device_augment else self.transform_batch,
        )

    def train_dataloader(self) -> PackedLoader:
        """This process's shuffled training batches (see :meth:`transform_batch` for what the model gets).

        Resumable: the order and crops come from ``(seed, epoch)``, and a checkpoint holds the
        position in the epoch (``docs/resume.md``).
        """
        return self._resumable(self._loader("train", "random", shuffle=True, drop_last=self.drop_last))

    def val_dataloader(self) -> PackedLoader:
        """This process's validation batches (centre crops), in order."""
        return self._loader("val", "center", shuffle=False)

    def test_dataloader(self) -> PackedLoader:
        """Test batches: centre crops, or with ``test_crops=10`` the ten crops ``[B, 10, 3, crop, crop]``."""
        return self._loader(self.test_split, "ten" if self.test_crops == 10 else "center", shuffle=False)

    def predict_dataloader(self) -> PackedLoader:
        """Same batches as :meth:`test_dataloader`."""
        return self.test_dataloader()

    def transform_batch(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` for the model: the batch's crops, flipped and normalized, on its device.

        Args:
            batch: a :class:`PackedBatch` (on any device).

        Returns:
            float32 ``[B, 3, crop, crop]`` (or ``[B, 10, 3, crop, crop]``) images and int64 labels.

        Example:
            >>> x, y = dm.transform_batch(next(iter(dm.train_dataloader())))  # doctest: +SKIP
        """
        x = crop_flip_normalize(batch.images, batch.top, batch.left, batch.flip, self.crop_size, self._mean, self._std)
        return x, batch.labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Crop, flip and normalize a :class:`PackedBatch` on the device it was moved to."""
        if isinstance(batch, PackedBatch):
            return self.transform_batch(batch)
        return batch  # device_augment=False: already (images, labels)
