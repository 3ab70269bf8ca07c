"""Does the classifier look at the object? Occlusion minima against the shapes data set's boxes.

For each validation image of a checkpoint trained on the embedded shapes data (which knows each
object's bounding box), the gray square is slid over the image (``occlusion_maps``, target = the
true label) and the position where the true class's probability is lowest is compared with the
object's box. Two criteria:

- **overlap**: the square at that position shares at least one pixel with the box. With the
  square ``[sx, sx+size) × [sy, sy+size)`` and the box ``[x0, x1) × [y0, y1)`` (exclusive ends,
  as ``ShapesDataset.box``): ``sx < x1 and x0 < sx + size and sy < y1 and y0 < sy + size``.
- **center**: the stricter one: the square's center ``(sx + size/2, sy + size/2)`` lies in the
  box, ``x0 <= cx < x1 and y0 <= cy < y1`` (pixel ``j`` covers ``[j, j+1)``).

Next to each share, its **chance** level: the share a position drawn uniformly from the grid
would get (the mean over images of the fraction of grid positions meeting the criterion). A
large square overlaps the box from almost everywhere, so the overlap share means something only
well above its chance level. Rows are given for all images and for the correctly classified
ones (on a misclassified image the true class's probability is low everywhere and its minimum
says little). ``drop`` is the mean of ``p(unoccluded) - p(min)``; ``flat`` the share of images
whose probability map varies by less than 1e-6 (no minimum to speak of).

    OMP_NUM_THREADS=1 python benchmarks/occlusion_box.py runs/quickstart/version_0/checkpoints/last.ckpt
    python benchmarks/occlusion_box.py CKPT --num_images 200 --size 24 16 --stride 6

Defaults: a square of a quarter of the image (24 px at 96 px), stride a third of it (8 px).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from zflight.cli._common import AnalysisError
from zflight.cli.occlusion import load_checkpoint
from zflight.analysis.occlusion import default_geometry
from zflight.attribution.occlusion import OcclusionMaps, occlusion_maps


def object_hits(maps: OcclusionMaps, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Compare each image's lowest-probability square with its object box.

    Args:
        maps: occlusion maps of ``N`` images.
        boxes: ``[N, 4]`` object boxes ``(x0, y0, x1, y1)``, exclusive ends.

    Returns:
        ``overlap`` and ``center`` (``[N]`` bool: the criteria above at the lowest-probability
        position), ``chance_overlap`` and ``chance_center`` (``[N]`` float: the fraction of grid
        positions meeting each), ``drop`` (``[N]``: unoccluded minus lowest probability).
    """
    boxes = boxes.to(torch.float64)
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    size = maps.size
    sy = maps.rows.to(torch.float64)[None, :, None]  # [1, rows, 1]
    sx = maps.cols.to(torch.float64)[None, None, :]  # [1, 1, cols]
    overlap = (sx < x1) & (x0 < sx + size) & (sy < y1) & (y0 < sy + size)  # [N, rows, cols]
    cx, cy = sx + size / 2, sy + size / 2
    center = (x0 <= cx) & (cx < x1) & (y0 <= cy) & (cy < y1)
    r, c = maps.lowest_prob_position().unbind(1)
    n = torch.arange(len(boxes))
    return {
        "overlap": overlap[n, r, c],
        "center": center[n, r, c],
        "chance_overlap": overlap.double().mean(dim=(1, 2)),
        "chance_center": center.double().mean(dim=(1, 2)),
        "drop": (maps.base_prob - maps.prob[n, r, c]).double(),
        # A flat map has no meaningful minimum (its first position wins the tie).
        "flat": (maps.prob.flatten(1).amax(dim=1) - maps.prob.flatten(1).amin(dim=1)) < 1e-6,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Print the table; return its rows."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt_path")
    p.add_argument("--num_images", type=int, default=200, help="first N validation images")
    p.add_argument("--size", type=int, nargs="+", help="square sides (default: image size / 4)")
    p.add_argument("--stride", type=int, help="step between positions (default: size / 3)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        module, datamodule = load_checkpoint(args.ckpt_path, args.device)
    except AnalysisError as err:
        p.error(str(err))
    if datamodule is None:
        p.error("the checkpoint's data module cannot be rebuilt")
    datamodule.setup("validate")
    ds = datamodule.val_dataset
    if not hasattr(ds, "box"):
        p.error(f"{type(ds).__name__} has no object boxes: this check needs the embedded shapes data")
    n = min(args.num_images, len(ds))
    items = [ds[i] for i in range(n)]
    images = torch.stack([x for x, _ in items]).to(args.device)
    labels = torch.tensor([y for _, y in items])
    boxes = torch.tensor([ds.box(i) for i in range(n)])
    h = images.shape[-1]
    sizes = args.size or [default_geometry(h, h)[0]]

    print(f"# occlusion minimum on the object: {args.ckpt_path}")
    print(f"# {n} validation images at {h} px; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}")
    header = (f"{'size':>4} {'stride':>6} {'grid':>5} {'images':>14} {'n':>4} {'overlap':>8} "
              f"{'chance':>7} {'center':>7} {'chance':>7} {'drop':>6} {'flat':>5} {'time s':>7}")
    print(header)
    rows = []
    for size in sizes:
        # A third of the square (10 × 10 positions at 96 px): finer grids move the minimum by
        # less than a stride and cost twice the time.
        stride = args.stride or max(1, size // 3)
        start = time.perf_counter()
        maps = occlusion_maps(module.model, images, labels.to(args.device), size=size, stride=stride,
                              batch_size=args.batch_size, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        maps = maps.to("cpu")
        hits = object_hits(maps, boxes)
        correct = maps.base_label == labels
        for name, keep in (("all", torch.ones(n, dtype=torch.bool)), ("correctly classified", correct)):
            k = int(keep.sum())
            row = {
                "size": size, "stride": stride, "subset": name, "n": k,
                **{key: float(v[keep].double().mean()) if k else float("nan") for key, v in hits.items()},
                "seconds": seconds,
            }
            rows.append(row)
            print(f"{size:>4} {stride:>6} {maps.grid[0]:>2}x{maps.grid[1]:<2} {name[:14]:>14} {k:>4} "
                  f"{row['overlap']:8.1%} {row['chance_overlap']:7.1%} {row['center']:7.1%} "
                  f"{row['chance_center']:7.1%} {row['drop']:6.3f} {row['flat']:5.0%} {seconds:7.1f}")
    print(f"# accuracy of the unoccluded images: {float(correct.double().mean()):.1%}")
    return rows


if __name__ == "__main__":
    main()
