"""Cost of dissecting on a Broden-format folder against the bare forward passes, its memory, and
the reader's speed.

Target (issue 22): dissecting resnet18 (torchvision, ``weights=None``) ``layer3`` and ``layer4``
on 1,000 Broden-format images at 224 px costs at most 3x the bare forward passes to those
layers, measured side by side in one process; peak memory flat in N (500 vs 2,000 images);
decoding the PNGs does not dominate (the reader's images/s next to the forward's).

The folder is generated once (random shapes as objects and two part layers, colour masks, a
material, whole-image scene and texture labels, texture-only images: ``tests/broden_folder.py``)
into ``--root`` and reused.

Every timing is the best of ``--repeats`` runs, interleaved, on the same folder:

- ``forward``: the images read from the folder (DataLoader, as dissect's first pass reads
  them) and run to ``layer4`` (``forward_until``: stopped after the last layer, as dissect is);
- ``dissect``: :func:`zflight.analysis.dissection.dissect` on the
  :class:`~zflight.data.BrodenDataset`, everything included (images, label PNGs, both passes);
- ``reader``: the images alone, and the concept masks alone (PNG decoding), in images/s.

Memory: the peak RSS of a fresh process while it dissects N images, above its RSS just before.

Run:
    python benchmarks/broden.py                     # N = 1000, memory at 500 and 2000
    python benchmarks/broden.py --num_images 200 --small 100 --large 400 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import _memory  # noqa: E402 (after the path)

LAYERS = ["layer3", "layer4"]


def folder(root: Path, n: int) -> Path:
    """The generated Broden folder of at least ``n`` 224 px images (written once, then reused)."""
    from tests.broden_folder import write_broden

    done = root / f"done_{n}"
    if not any(int(p.name.split("_")[1]) >= n for p in root.glob("done_*")):
        t = time.perf_counter()
        write_broden(root, n, size=224, seed=0)
        done.touch()
        print(f"generated {n} images into {root} in {time.perf_counter() - t:.0f} s")
    return root


def _model() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _dataset(root: Path, n: int) -> Any:
    from zflight.data import BrodenDataset

    ds = BrodenDataset(root)
    return Subset(ds, range(n)) if n < len(ds) else ds


def _forward(model: torch.nn.Module, data: Any, batch_size: int) -> None:
    from zflight.attribution._layers import forward_until

    modules = [dict(model.named_modules())[name] for name in LAYERS]
    with torch.inference_mode():
        for images, _ in DataLoader(data, batch_size=batch_size):
            forward_until(model, modules, images)


def _dissect(model: torch.nn.Module, data: Any, batch_size: int, workers: int) -> Any:
    from zflight.analysis.dissection import ConceptSubset, dissect

    if isinstance(data, Subset):
        data = ConceptSubset(data.dataset, data.indices)
    return dissect(model, data, LAYERS, batch_size=batch_size, num_workers=workers, progress=False)


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timings(root: Path, n: int, batch_size: int, repeats: int, workers: int) -> dict[str, Any]:
    model = _model()
    data = _dataset(root, n)
    base = data.dataset if isinstance(data, Subset) else data
    # Interleaved (forward, dissect, forward, dissect, ...), best of each: on a shared machine
    # the load changes from minute to minute, and measuring one after the other skews the ratio.
    runs = {
        "forward": lambda: _forward(model, data, batch_size),
        "dissect": lambda: _dissect(model, data, batch_size, workers),
    }
    best = {k: float("inf") for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            best[k] = min(best[k], _timed(f))
    best["read images"] = _timed(lambda: [base[i] for i in range(n)])
    best["read masks"] = _timed(lambda: [base.concept_masks(i) for i in range(n)])
    result = _dissect(model, data, batch_size, workers)
    best["summary"] = {k: (v["detectors"], v["unique_concepts"]) for k, v in result.summary().items()}
    return best


def peak_rss_mb(root: Path, n: int, batch_size: int) -> tuple[float, float]:
    """RSS (MiB) of a fresh process before, and its peak while, it dissects ``n`` images
    (no DataLoader workers: everything is in the measured process)."""
    return _memory.peak_rss_mb(
        "from pathlib import Path\n"
        "from benchmarks.broden import _model, _dataset, _dissect\n"
        f"model, data = _model(), _dataset(Path({str(root)!r}), {n})",
        f"_dissect(model, data, {batch_size}, 0)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/zflight_broden_224", help="where the generated folder lives")
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--small", type=int, default=500, help="the smaller N of the memory check")
    parser.add_argument("--large", type=int, default=2000, help="the larger N of the memory check")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="dissect's DataLoader workers")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = folder(Path(args.root), max(args.num_images, args.large))

    t = timings(root, args.num_images, args.batch_size, args.repeats, args.workers)
    n = args.num_images
    print(f"resnet18 (weights=None) {', '.join(LAYERS)} on {n} generated Broden images at 224 px "
          f"(masks 112 px), batch {args.batch_size}, {args.threads} thread(s), {args.workers} worker(s), "
          f"best of {args.repeats}")
    print(f"{'what':<44}{'seconds':>9}{'x forward':>11}{'images/s':>10}")
    for name, key in [("forward to layer4 (images read from disk)", "forward"),
                      ("dissect, all included", "dissect"),
                      ("reader: images alone (JPEG, normalize)", "read images"),
                      ("reader: concept masks alone (PNG decode)", "read masks")]:
        print(f"{name:<44}{t[key]:>9.2f}{t[key] / t['forward']:>10.2f}x{n / t[key]:>10.1f}")
    print("detectors / unique concepts per layer:", t["summary"])
    mem = {}
    if not args.skip_memory:
        mem = {m: peak_rss_mb(root, m, args.batch_size) for m in (args.small, args.large)}
        print(f"{'N':>6}{'RSS before MiB':>16}{'peak in dissect':>17}{'growth':>9}")
        for m, (before, peak) in mem.items():
            print(f"{m:>6}{before:>16.1f}{peak:>17.1f}{peak - before:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timings": {k: v for k, v in t.items() if k != "summary"}, "summary": t["summary"],
                       "peak_rss_mb": mem}, f, indent=1)


if __name__ == "__main__":
    main()
