"""Pack an ImageNet-style folder once into uint8 arrays that a GPU can be fed from at full speed.

``python -m zflight pack --src /data/imagenet --dst /data/imagenet-zf --size 256`` decodes every
JPEG once, in parallel, and applies the paper's preprocessing up to the random crop (shorter side
to ``size``, centre ``size``×``size`` crop; exactly the resize and crop of
:class:`~zflight.data.ImageFolderDataModule`, so the pixels match it). What remains per epoch
(random crop, flip, normalization) is cheap enough for the GPU:
:class:`~zflight.data.PackedImageNetDataModule` reads the pack.

Layout of ``dst`` (every array is a ``.npy`` file: ``numpy.load(path, mmap_mode="r")`` maps it)::

    manifest.json           format, size, counts, per-chunk and per-split SHA-256, unreadable files
    classes.json            class names in label order (the sub-folders of src/train, sorted)
    train_images.npy        uint8 [N, size, size, 3] (RGB, rows in file-list order)
    train_labels.npy        int64 [N]; -1 marks a row left empty by an unreadable file
    train_files.txt         the source file of each row, relative to src/train
    val_images.npy ...      the same for src/val, when it exists

Size on disk: ``N * size**2 * 3`` bytes; ImageNet-1k train at 256 px is 1,281,167 × 196,608 B
≈ 252 GB (144 px: 80 GB, 128 px: 63 GB).

Resuming: rows are written in chunks of ``chunk_size`` images, each chunk's SHA-256 recorded in
``progress.json`` once its bytes are on disk. A rerun with the same arguments continues with the
chunks not recorded; a finished pack (``manifest.json`` present) is verified and left alone.

Unreadable files: packing goes on past them, so that one run finds them all; then, unless
``skip_corrupt``, it stops with one :class:`~zflight.data.UnreadableImageError` listing every
one, and no manifest is written. Rerunning with ``--skip-corrupt`` finishes the pack without
them (their rows are kept empty, labelled -1, never read, and listed in the manifest); replacing
the files and rerunning retries them. Nothing else is decoded again in either case.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import transforms as T

from zflight.data.datamodules import (
    ImageFolderDataModule,
    UnreadableImageError,
    _check_int,
    _list_images,
    _load_rgb,
)

__all__ = ["pack", "verify", "read_manifest", "summary", "PackVerificationError", "SPLITS", "PACK_FORMAT"]

#: Splits packed, when ``src/<split>`` exists (``train`` must).
SPLITS: tuple[str, ...] = ("train", "val")
#: ``format`` field of every manifest; ``version`` changes with the layout.
PACK_FORMAT = "zflight-pack"
_VERSION = 1
_MANIFEST, _PROGRESS, _CLASSES = "manifest.json", "progress.json", "classes.json"
# progress.json is rewritten at most this often (and always when packing stops), so that a
# 1.3M-image pack does not spend its time rewriting a 100 kB file after every chunk.
_SAVE_EVERY_S = 2.0


class PackVerificationError(ValueError):
    """A pack whose files do not match its manifest. The message names each file and row range."""


# ------------------------------------------------------------------------------------ files
def _images_name(split: str) -> str:
    return f"{split}_images.npy"


def _labels_name(split: str) -> str:
    return f"{split}_labels.npy"


def _files_name(split: str) -> str:
    return f"{split}_files.txt"


def _npy_offset(path: Path) -> int:
    """Byte offset of the data in a ``.npy`` file (its header length)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def _write_json(path: Path, obj: Any) -> None:
    # Write-then-rename: a crash leaves the old file or the new one, never half of one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _split_digest(chunk_digests: Sequence[str]) -> str:
    return _sha256("\n".join(chunk_digests).encode())


def read_manifest(dst: str | Path) -> dict[str, Any]:
    """The manifest of a finished pack.

    Args:
        dst: the pack folder.

    Returns:
        The parsed ``manifest.json`` (keys ``size``, ``classes``, ``splits`` with per-split
        ``count``, ``listed``, ``excluded``, ``sha256``, ...).

    Raises:
        FileNotFoundError: ``dst`` holds no finished pack (the message says whether a pack was
            started there and how to finish or make one).
        ValueError: the manifest is not a zflight pack of a version this code reads.

    Example:
        >>> read_manifest("/data/imagenet-zf")["splits"]["train"]["count"]  # doctest: +SKIP
        1281167
    """
    dst = Path(dst).expanduser()
    path = dst / _MANIFEST
    if not path.is_file():
        if (dst / _PROGRESS).is_file():
            raise FileNotFoundError(
                f"the pack in {dst} is incomplete ({_MANIFEST} missing, {_PROGRESS} present): finish it by "
                f"rerunning 'python -m zflight pack --src <imagenet folder> --dst {dst}' with the same arguments"
            )
        raise FileNotFoundError(
            f"no pack in {dst} ({path} does not exist): make one with "
            f"'python -m zflight pack --src <imagenet folder> --dst {dst} --size 256'"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") != _VERSION:
        raise ValueError(
            f"{path} is not a {PACK_FORMAT} version {_VERSION} manifest "
            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})"
        )
    return manifest


# ----------------------------------------------------------------------------------- workers
def _preprocess(path: str, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8: the folder data module's resize and centre crop, on PIL."""
    img = _load_rgb(path)
    # T.Resize/T.CenterCrop on the PIL image, exactly as ImageFolderDataModule does before its
    # random crop: a pack-fed crop equals the folder-fed crop at the same offset.
    img = T.CenterCrop(size)(T.Resize(size)(img))
    return np.asarray(img, dtype=np.uint8)


def _pack_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Decode one chunk of files, write its rows and labels with ``pwrite``, fsync, hash them."""
    size, start, paths = task["size"], task["start"], task["paths"]
    n = len(paths)
    pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
    labels = np.asarray(task["labels"], dtype=np.int64).copy()
    unreadable: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        try:
            pixels[i] = _preprocess(path, size)
        except UnreadableImageError as e:
            labels[i] = -1  # the row stays zeros and is never read
            unreadable.append(
                {"index": start + i, "path": path, "label": int(task["labels"][i]), "error": str(e.__cause__ or e)}
            )
    _write_rows(
        task["images_path"], task["images_offset"], task["labels_path"], task["labels_offset"], start, pixels, labels
    )
    return {
        "split": task["split"],
        "chunk": task["chunk"],
        "digest": _chunk_digest(pixels, labels),
        "unreadable": unreadable,
        "n": n,
    }


def _write_rows(
    images_path: str,
    images_offset: int,
    labels_path: str,
    labels_offset: int,
    start: int,
    pixels: np.ndarray,
    labels: np.ndarray,
) -> None:
    row = pixels[0].nbytes if len(pixels) else 0
    for path, offset, arr, item in (
        (images_path, images_offset, pixels, row),
        (labels_path, labels_offset, labels, 8),
    ):
        fd = os.open(path, os.O_WRONLY)
        try:
            data = memoryview(np.ascontiguousarray(arr)).cast("B")
            pos, done = offset + start * item, 0
            while done < len(data):  # pwrite may write less than asked
                done += os.pwrite(fd, data[done:], pos + done)
            # A chunk is recorded as done only once its bytes are on disk, so a crash or power
            # loss never leaves a recorded chunk unwritten.
            os.fdatasync(fd)
        finally:
            os.close(fd)


def _chunk_digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(memoryview(np.ascontiguousarray(pixels)).cast("B"))
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def _hash_chunk(task: dict[str, Any]) -> tuple[str, int, str]:
    """Re-read one chunk from disk and hash it as :func:`_pack_chunk` did."""
    n, row, start = task["n"], task["row_bytes"], task["start"]
    with open(task["images_path"], "rb") as f:
        f.seek(task["images_offset"] + start * row)
        pixels = np.frombuffer(f.read(n * row), dtype=np.uint8)
    with open(task["labels_path"], "rb") as f:
        f.seek(task["labels_offset"] + start * 8)
        labels = np.frombuffer(f.read(n * 8), dtype="<i8")
    if pixels.size != n * row or labels.size != n:
        return task["split"], task["chunk"], "truncated"
    return task["split"], task["chunk"], _chunk_digest(pixels, labels)


def _executor(workers: int) -> ProcessPoolExecutor:
    # fork where there is one, as torch's DataLoader does: the workers only run PIL and numpy,
    # and forked they start in milliseconds instead of importing torch and Lightning again.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method))


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(fn: Callable[[dict[str, Any]], Any], tasks: list[dict[str, Any]], workers: int) -> Iterator[Any]:
    """``fn`` over ``tasks`` in completion order, in ``workers`` processes (0: in this one)."""
    if workers == 0 or len(tasks) <= 1:
        for task in tasks:
            yield fn(task)
        return
    # A process pool rather than multiprocessing.Pool: a worker that dies (out of memory,
    # killed) raises BrokenProcessPool here instead of being replaced and hanging the map.
    with _executor(min(workers, len(tasks))) as pool:
        pending: set[Future] = set()
        todo = iter(tasks)
        try:
            while True:
                # A bounded queue keeps the pickled file lists of 1.3M images out of memory.
                for task in todo:
                    pending.add(pool.submit(fn, task))
                    if len(pending) >= 4 * workers:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            # On an exception (or Ctrl-C) the chunks not started are dropped and those being
            # written finish unrecorded: the next run redoes them.
            for future in pending:
                future.cancel()


# -------------------------------------------------------------------------------------- pack
def _plan(src: Path, size: int) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Classes and, per split present in ``src``, the ``(path, label)`` list in row order."""
    # The folder data module decides what a class and an image are, so both paths agree.
    folder = ImageFolderDataModule(src, resize=size, crop_size=size, num_workers=0)
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        d = folder.root / split
        if d.is_dir():
            splits[split] = _list_images(d, folder.class_to_idx)
    if not splits.get("train"):
        raise FileNotFoundError(f"no images found in {folder.root / 'train'}/<class>/")
    return folder.classes, splits


def _listing_digest(src_split: Path, samples: list[tuple[str, int]]) -> tuple[list[str], str]:
    rel = [os.path.relpath(p, src_split) for p, _ in samples]
    text = "\n".join(f"{label}\t{r}" for r, (_, label) in zip(rel, samples))
    return rel, _sha256(text.encode())


def _save_progress(dst: Path, progress: dict[str, Any]) -> None:
    _write_json(dst / _PROGRESS, progress)


def _record_chunk(progress: dict[str, Any], result: dict[str, Any]) -> None:
    """Note one finished chunk (and its unreadable files) in the in-memory progress record."""
    split = progress["splits"][result["split"]]
    split["done"][str(result["chunk"])] = result["digest"]
    for bad in result["unreadable"]:
        split["unreadable"][str(bad["index"])] = {k: bad[k] for k in ("path", "label", "error")}


def _start(
    dst: Path, src: Path, size: int, chunk_size: int, classes: list[str], splits: dict[str, Any]
) -> dict[str, Any]:
    """Allocate the arrays and write the class list, file lists and a fresh progress record."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / _CLASSES).write_text(json.dumps(classes, indent=0))
    progress: dict[str, Any] = {
        "format": PACK_FORMAT,
        "version": _VERSION,
        "size": size,
        "chunk_size": chunk_size,
        "source": str(src),
        "classes_sha256": _sha256((dst / _CLASSES).read_bytes()),
        "splits": {},
    }
    for split, (samples, rel, listing) in splits.items():
        n = len(samples)
        # open_memmap writes the header and sizes the file (sparse until rows are written);
        # nothing is mapped afterwards: workers pwrite their rows.
        np.lib.format.open_memmap(dst / _images_name(split), mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        labels = np.lib.format.open_memmap(dst / _labels_name(split), mode="w+", dtype="<i8", shape=(n,))
        labels[:] = -1
        labels.flush()
        del labels
        (dst / _files_name(split)).write_text("".join(r + "\n" for r in rel))
        progress["splits"][split] = {"listed": n, "listing_sha256": listing, "done": {}, "unreadable": {}}
    # Written last: its presence means the arrays above exist at full size.
    _save_progress(dst, progress)
    return progress


def _check_resumable(
    dst: Path,
    progress: dict[str, Any],
    src: Path,
    size: int,
    chunk_size: int,
    classes: list[str],
    splits: dict[str, Any],
) -> None:
    hint = f"pack into a new --dst, or delete {dst} to start over"
    if progress.get("format") != PACK_FORMAT or progress.get("version") != _VERSION:
        raise ValueError(f"{dst / _PROGRESS} was not written by this version of zflight's packer; {hint}")
    for name, now in (("size", size), ("chunk_size", chunk_size)):
        if progress[name] != now:
            raise ValueError(f"{dst} holds a pack started with {name}={progress[name]}, not {now}; {hint}")
    if progress["classes_sha256"] != _sha256(json.dumps(classes, indent=0).encode()):
        raise ValueError(f"the classes in {src / 'train'} differ from those of the pack started in {dst}; {hint}")
    if set(progress["splits"]) != set(splits):
        raise ValueError(
            f"the pack started in {dst} has splits {sorted(progress['splits'])}, {src} has {sorted(splits)}; {hint}"
        )
    for split, (samples, _, listing) in splits.items():
        if progress["splits"][split]["listing_sha256"] != listing:
            raise ValueError(
                f"the files in {src / split} changed since the pack in {dst} was started "
                f"({len(samples)} now, {progress['splits'][split]['listed']} then); {hint}"
            )


def _retry_unreadable(dst: Path, progress: dict[str, Any], size: int, chunk_size: int) -> None:
    """Decode again the files that failed in an earlier run (they may have been replaced)."""
    for split, record in progress["splits"].items():
        images, labels_path = dst / _images_name(split), dst / _labels_name(split)
        for key in list(record["unreadable"]):
            index = int(key)
            try:
                row = _preprocess(record["unreadable"][key]["path"], size)
            except UnreadableImageError as e:
                record["unreadable"][key]["error"] = str(e.__cause__ or e)
                continue
            label = np.array([record["unreadable"][key]["label"]], dtype=np.int64)
            _write_rows(
                str(images), _npy_offset(images), str(labels_path), _npy_offset(labels_path), index, row[None], label
            )
            del record["unreadable"][key]
            chunk = index // chunk_size
            if str(chunk) in record["done"]:  # the chunk's bytes changed: hash it again
                n = min(chunk_size, record["listed"] - chunk * chunk_size)
                _, _, digest = _hash_chunk(_hash_task(dst, split, chunk, chunk_size, n, size))
                record["done"][str(chunk)] = digest


def _hash_task(dst: Path, split: str, chunk: int, chunk_size: int, n: int, size: int) -> dict[str, Any]:
    images, labels = dst / _images_name(split), dst / _labels_name(split)
    return {
        "split": split,
        "chunk": chunk,
        "start": chunk * chunk_size,
        "n": n,
        "row_bytes": size * size * 3,
        "images_path": str(images),
        "images_offset": _npy_offset(images),
        "labels_path": str(labels),
        "labels_offset": _npy_offset(labels),
    }


def _unreadable_list(progress: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"split": split, "index": int(i), **bad}
        for split, record in progress["splits"].items()
        for i, bad in sorted(record["unreadable"].items(), key=lambda kv: int(kv[0]))
    ]


def _unreadable_message(bad: list[dict[str, Any]], dst: Path) -> str:
    lines = [
        f"{len(bad)} image file{'s' if len(bad) > 1 else ''} could not be read (every other file is packed into {dst}):"
    ]
    lines += [f"  {b['path']}: {b['error']}" for b in bad]
    lines.append(
        "Rerun with --skip-corrupt (skip_corrupt=True) to finish the pack without them, or replace them and rerun; "
        "either way nothing else is decoded again."
    )
    return "\n".join(lines)


def pack(
    src: str | Path,
    dst: str | Path,
    *,
    size: int = 256,
    workers: int | None = None,
    skip_corrupt: bool = False,
    chunk_size: int = 1024,
    progress: bool = True,
) -> dict[str, Any]:
    """Pack ``src/train`` and ``src/val`` into memory-mappable uint8 arrays in ``dst``; return the manifest.

    Each image: shorter side resized to ``size`` (bilinear, antialiased), centre ``size``×``size``
    crop, stored as RGB uint8 rows ``[size, size, 3]``. See the module docstring for the layout,
    resuming and unreadable files.

    Args:
        src: ImageNet-style folder: ``src/train/<class>/*.JPEG`` and optionally ``src/val/<class>/``.
        dst: folder for the pack (created). Holding a finished pack, it is verified and left
            alone; holding an interrupted one with the same arguments, packing continues.
        size: side of the stored square images (256 in the paper).
        workers: decoding processes (all CPUs available to this process when None; 0 decodes in
            this process).
        skip_corrupt: finish the pack without the files that cannot be read (listed in the
            manifest) instead of raising.
        chunk_size: images per chunk, the unit of parallel work, resuming and checksums.
        progress: show a progress bar.

    Returns:
        The manifest (also written to ``dst/manifest.json``).

    Raises:
        FileNotFoundError: ``src`` or ``src/train`` is missing or holds no images.
        UnreadableImageError: some files cannot be read and ``skip_corrupt`` is False; the
            message lists them all. The rest of the pack is written and kept for the rerun.
        ValueError: a bad argument, or ``dst`` holds a pack made with other arguments or from
            other files.
        PackVerificationError: ``dst`` holds a finished pack whose files no longer match it.

    Example:
        >>> manifest = pack("/data/imagenet", "/data/imagenet-zf", size=256)  # doctest: +SKIP
        >>> manifest["splits"]["train"]["count"]  # doctest: +SKIP
        1281167
    """
    _check_int("size", size, 1)
    _check_int("chunk_size", chunk_size, 1)
    if workers is None:
        workers = _default_workers()
    _check_int("workers", workers, 0)
    src, dst = Path(src).expanduser().absolute(), Path(dst).expanduser().absolute()

    if (dst / _MANIFEST).is_file():
        manifest = read_manifest(dst)
        if manifest["size"] != size:
            raise ValueError(
                f"{dst} already holds a finished pack at size {manifest['size']}, not {size}; pack into a new --dst"
            )
        return verify(dst, workers=workers, progress=progress)

    classes, listing = _plan(src, size)
    splits = {}
    for split, samples in listing.items():
        rel, digest = _listing_digest(src / split, samples)
        splits[split] = (samples, rel, digest)
    if (dst / _PROGRESS).is_file():
        record = json.loads((dst / _PROGRESS).read_text())
        _check_resumable(dst, record, src, size, chunk_size, classes, splits)
        _retry_unreadable(dst, record, size, chunk_size)
    else:
        record = _start(dst, src, size, chunk_size, classes, splits)

    tasks = []
    for split, (samples, _, _) in splits.items():
        images, labels = dst / _images_name(split), dst / _labels_name(split)
        offsets = (_npy_offset(images), _npy_offset(labels))
        done = record["splits"][split]["done"]
        for chunk, start in enumerate(range(0, len(samples), chunk_size)):
            if str(chunk) in done:
                continue
            part = samples[start : start + chunk_size]
            tasks.append(
                {
                    "split": split,
                    "chunk": chunk,
                    "start": start,
                    "size": size,
                    "paths": [p for p, _ in part],
                    "labels": [label for _, label in part],
                    "images_path": str(images),
                    "images_offset": offsets[0],
                    "labels_path": str(labels),
                    "labels_offset": offsets[1],
                }
            )
    total = sum(len(s) for s, _, _ in splits.values())
    remaining = sum(len(t["paths"]) for t in tasks)
    from tqdm.auto import tqdm

    last_save = time.monotonic()
    with tqdm(
        total=total, initial=total - remaining, unit="img", desc=f"packing into {dst}", disable=not progress
    ) as bar:
        try:
            for result in _run(_pack_chunk, tasks, workers):
                _record_chunk(record, result)
                bar.update(result["n"])
                if time.monotonic() - last_save > _SAVE_EVERY_S:
                    _save_progress(dst, record)
                    last_save = time.monotonic()
        finally:
            # Whatever stopped the loop, the chunks recorded so far are kept for the rerun.
            _save_progress(dst, record)

    bad = _unreadable_list(record)
    if bad and not skip_corrupt:
        raise UnreadableImageError(_unreadable_message(bad, dst))
    manifest = _finish(dst, record, classes, bad)
    if progress:
        print(summary(dst, manifest), file=sys.stderr)
    return manifest


def _finish(dst: Path, record: dict[str, Any], classes: list[str], bad: list[dict[str, Any]]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": PACK_FORMAT,
        "version": _VERSION,
        "size": record["size"],
        "layout": "uint8 [N, size, size, 3] RGB rows; labels int64, -1 = unreadable file left out",
        "preprocessing": "shorter side to {0} (bilinear, antialiased), centre {0}x{0} crop".format(record["size"]),
        "source": record["source"],
        "chunk_size": record["chunk_size"],
        "classes": len(classes),
        "classes_sha256": record["classes_sha256"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "splits": {},
        "unreadable": bad,
    }
    for split, r in record["splits"].items():
        chunks = [r["done"][str(c)] for c in range(len(r["done"]))]
        excluded = len(r["unreadable"])
        manifest["splits"][split] = {
            "images": _images_name(split),
            "labels": _labels_name(split),
            "files": _files_name(split),
            "listed": r["listed"],
            "count": r["listed"] - excluded,
            "excluded": excluded,
            "bytes": r["listed"] * record["size"] ** 2 * 3,
            "chunks": chunks,
            "sha256": _split_digest(chunks),
        }
    _write_json(dst / _MANIFEST, manifest)
    (dst / _PROGRESS).unlink()
    return manifest


def summary(dst: Path, manifest: dict[str, Any]) -> str:
    """One line saying what the pack in ``dst`` holds (counts per split, size, folder)."""
    parts = [
        f"{s['count']:,} {name}" + (f" ({s['excluded']} unreadable left out)" if s["excluded"] else "")
        for name, s in manifest["splits"].items()
    ]
    gb = sum(s["bytes"] for s in manifest["splits"].values()) / 1e9
    return (
        f"pack {dst}: {' + '.join(parts)} images at {manifest['size']} px, {gb:.2f} GB, "
        f"SHA-256 checksums in {dst / _MANIFEST}"
    )


# ------------------------------------------------------------------------------------ verify
def verify(dst: str | Path, *, workers: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Check a finished pack against its manifest: files, shapes, counts, labels and every chunk's SHA-256.

    Args:
        dst: the pack folder.
        workers: hashing processes (all available CPUs when None; 0 hashes in this process).
        progress: show a progress bar.

    Returns:
        The manifest, when everything matches.

    Raises:
        FileNotFoundError: ``dst`` holds no finished pack.
        PackVerificationError: something differs; the message lists every difference, naming
            the file and, for pixel or label changes, the rows of the chunk.

    Example:
        >>> verify("/data/imagenet-zf")["splits"]["val"]["count"]  # doctest: +SKIP
        50000
    """
    if workers is None:
        workers = _default_workers()
    _check_int("workers", workers, 0)
    dst = Path(dst).expanduser().absolute()
    manifest = read_manifest(dst)
    size, chunk_size = manifest["size"], manifest["chunk_size"]
    problems: list[str] = []
    classes_path = dst / _CLASSES
    if not classes_path.is_file():
        problems.append(f"{classes_path} is missing")
    elif _sha256(classes_path.read_bytes()) != manifest["classes_sha256"]:
        problems.append(f"{classes_path} was modified (SHA-256 differs from the manifest's)")
    tasks = []
    for split, s in manifest["splits"].items():
        images, labels = dst / s["images"], dst / s["labels"]
        ok = True
        for path, shape, dtype in (
            (images, (s["listed"], size, size, 3), np.uint8),
            (labels, (s["listed"],), np.dtype("<i8")),
        ):
            if not path.is_file():
                problems.append(f"{path} is missing")
                ok = False
                continue
            got_shape, got_dtype = _npy_header(path)
            if got_shape != shape or got_dtype != dtype:
                problems.append(f"{path} holds {got_dtype} {got_shape}, the manifest says {np.dtype(dtype)} {shape}")
                ok = False
            else:
                expected = _npy_offset(path) + int(np.prod(shape)) * np.dtype(dtype).itemsize
                if path.stat().st_size != expected:
                    problems.append(f"{path} has {path.stat().st_size} bytes, not the {expected} its header implies")
                    ok = False
        if s["count"] != s["listed"] - s["excluded"]:
            problems.append(
                f"the manifest's counts of {split} disagree: {s['count']} != {s['listed']} - {s['excluded']}"
            )
        if _split_digest(s["chunks"]) != s["sha256"]:
            problems.append(f"the manifest's chunk list of {split} does not match its sha256")
        if ok:
            lab = np.load(labels, mmap_mode="r")
            kept = int((lab >= 0).sum())
            if kept != s["count"] or int(lab.max(initial=-1)) >= manifest["classes"]:
                problems.append(
                    f"{labels} has {kept} labelled rows (max label {int(lab.max(initial=-1))}), "
                    f"the manifest says {s['count']} of {manifest['classes']} classes"
                )
            for chunk, start in enumerate(range(0, s["listed"], chunk_size)):
                tasks.append(_hash_task(dst, split, chunk, chunk_size, min(chunk_size, s["listed"] - start), size))
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), unit="chunk", desc=f"verifying {dst}", disable=not progress) as bar:
        for split, chunk, digest in _run(_hash_chunk, tasks, workers):
            bar.update(1)
            s = manifest["splits"][split]
            if digest != s["chunks"][chunk]:
                start = chunk * chunk_size
                end = min(start + chunk_size, s["listed"])
                problems.append(
                    f"rows {start}-{end - 1} of {dst / s['images']} or {dst / s['labels']} were modified "
                    f"(chunk {chunk}: SHA-256 {digest[:12]}..., manifest {s['chunks'][chunk][:12]}...)"
                )
    if problems:
        raise PackVerificationError(f"pack {dst} does not match its manifest:\n  " + "\n  ".join(sorted(problems)))
    return manifest
