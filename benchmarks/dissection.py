"""Cost of network dissection against the bare forward passes it needs, and its memory.

Target (issue 14): dissecting conv1-conv5 of the quickstart model (quarter-width ZFNet at
64 px) on 2,000 images costs at most 3x the bare forward passes over the same images, measured
side by side in one process, with memory that does not grow with the number of images.

Every timing is the best of ``--repeats`` runs, interleaved, each on the same, already rendered
images:

- ``forward``: one full forward pass per batch over the images (what any analysis pays);
- ``dissect, masks precomputed``: :func:`zflight.analysis.dissection.dissect` on a data set
  whose ``concept_masks`` returns masks computed before the clock starts;
- ``dissect, total``: the same on the ShapesDataset itself, so that the concept masks are
  generated inside the timed region (their cost is the data set's, not dissection's).

Memory: the peak RSS of a fresh process while it dissects N images, above its RSS just before,
at two N (tracemalloc does not see torch's CPU allocations), with the data set's own image
cache shown apart.

Run:
    python benchmarks/dissection.py                   # N = 2000, random init
    python benchmarks/dissection.py --num_images 500 --ckpt_path quickstart.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
from torch.utils.data import Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _memory  # noqa: E402 (after the path)

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


class _Precomputed(Dataset):
    """A ShapesDataset's images and concept masks, held in memory."""

    def __init__(self, base: Any) -> None:
        self.concepts = base.concepts
        self.items = [base[i] for i in range(len(base))]
        self.masks = [base.concept_masks(i) for i in range(len(base))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.items[i]

    def concept_masks(self, i: int) -> dict[str, torch.Tensor]:
        return self.masks[i]


def _model(ckpt_path: str | None) -> torch.nn.Module:
    import zflight

    if ckpt_path:
        from zflight.checkpoint import load_classifier

        return load_classifier(ckpt_path).eval()
    torch.manual_seed(0)
    return zflight.zfnet(num_classes=10, width=0.25, image_size=64, init="kaiming").eval()


def _forward(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> None:
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            model(images[start : start + batch_size])


def _best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def timings(n: int, ckpt_path: str | None, batch_size: int, repeats: int) -> dict[str, float]:
    from zflight.analysis.dissection import dissect
    from zflight.data import ShapesDataset

    model = _model(ckpt_path)
    shapes = ShapesDataset(n, image_size=64, seed=0).render_all(progress=False)
    pre = _Precomputed(shapes)
    images = torch.stack([x for x, _ in pre.items])
    # Interleaved (forward, dissect, dissect, forward, ...), best of each: on a shared machine
    # the load changes from minute to minute, and measuring one after the other skews the ratio.
    runs = {
        "forward": lambda: _forward(model, images, batch_size),
        "precomputed": lambda: dissect(model, pre, LAYERS, batch_size=batch_size, progress=False),
        "total": lambda: dissect(model, shapes, LAYERS, batch_size=batch_size, progress=False),
    }
    best = {k: _best(f, 1) for k, f in runs.items()}
    for _ in range(repeats - 1):
        best = {k: min(best[k], _best(f, 1)) for k, f in runs.items()}
    t_fwd, t_pre, t_tot = best["forward"], best["precomputed"], best["total"]
    t_masks = _best(lambda: [shapes.concept_masks(i) for i in range(n)], 1)
    result = dissect(model, pre, LAYERS, batch_size=batch_size, progress=False)
    summary = {k: (v["detectors"], v["unique_concepts"]) for k, v in result.summary().items()}
    return {"forward": t_fwd, "precomputed": t_pre, "total": t_tot, "masks": t_masks, "summary": summary}


def peak_rss_mb(n: int, ckpt_path: str | None, batch_size: int) -> tuple[float, float]:
    """RSS (MiB) of a fresh process before, and its peak while, it dissects ``n`` images.

    The peak is reset just before :func:`dissect`, so that imports do not hide it. The data set
    renders its images as the DataLoader asks for them and keeps them in its uint8 cache
    (``n * 3 * 64 * 64`` bytes): that cache is the data set's, and is reported apart from what
    dissection itself holds.
    """
    return _memory.peak_rss_mb(
        "from benchmarks.dissection import _model, LAYERS\n"
        "from zflight.analysis.dissection import dissect\n"
        "from zflight.data import ShapesDataset\n"
        f"model = _model({ckpt_path!r})\n"
        f"ds = ShapesDataset({n}, image_size=64, seed=0)",
        f"dissect(model, ds, LAYERS, batch_size={batch_size}, progress=False)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500, help="the smaller N of the memory check")
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t = timings(args.num_images, args.ckpt_path, args.batch_size, args.repeats)
    print(f"dissect {', '.join(LAYERS)} of quarter-width ZFNet at 64 px, N={args.num_images}, "
          f"batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'what':<38}{'seconds':>9}{'x forward':>11}")
    for name, key in [("forward passes (bare)", "forward"),
                      ("dissect, concept masks precomputed", "precomputed"),
                      ("dissect, total (masks generated)", "total"),
                      ("  of which: generating the masks", "masks")]:
        print(f"{name:<38}{t[key]:>9.2f}{t[key] / t['forward']:>10.2f}x")
    print("detectors / unique concepts per layer:", t["summary"])

    mem = {n: peak_rss_mb(n, args.ckpt_path, args.batch_size) for n in (args.small, args.num_images)}
    print(f"{'N':>6}{'RSS before MiB':>16}{'peak in dissect':>17}{'growth':>9}{'of which image cache':>22}")
    for n, (before, peak) in mem.items():
        cache = n * 3 * 64 * 64 / 2**20
        print(f"{n:>6}{before:>16.1f}{peak:>17.1f}{peak - before:>9.1f}{cache:>22.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timings": {k: v for k, v in t.items() if k != "summary"},
                       "summary": t["summary"], "peak_rss_mb": mem}, f, indent=1)


if __name__ == "__main__":
    main()
