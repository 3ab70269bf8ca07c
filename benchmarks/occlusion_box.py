"""Does the classifier look at the object? Occlusion minima against the shapes data set's boxes.

For each validation image of a checkpoint trained on the embedded shapes data (which knows each
object's bounding box and exact mask), the gray square is slid over the image (``occlusion_maps``,
target = the true label) and the position where the true class's probability is lowest is
compared with the object. The comparison is :func:`zflight.analysis.evaluation.pointing_game`
(the metric ``python -m zflight evaluate`` reports, docs/evaluation.md), not a second
implementation: each position's ``1 - p`` is put on the pixel under the square's center (zero on
every other pixel), so the map's maximum is the lowest-probability position, and the pointing
game asks whether that pixel lies in a mask. Three masks:

- **overlap**: the pixels whose square would share at least one pixel with the box. With the
  square ``[sx, sx+size) × [sy, sy+size)`` and the box ``[x0, x1) × [y0, y1)`` (exclusive ends,
  as ``ShapesDataset.box``), ``sx < x1 and x0 < sx + size`` (likewise in y); for the center pixel
  ``px = sx + size // 2`` that is ``x0 - ceil(size/2) < px < x1 + size // 2``: the box grown by
  the square.
- **center**: the box itself: the square's center ``(sx + size/2, sy + size/2)`` lies in the box,
  ``x0 <= cx < x1 and y0 <= cy < y1`` (pixel ``j`` covers ``[j, j+1)``, so the center lies in
  the box exactly when the pixel under it does).
- **mask**: the object's exact silhouette (``ShapesDataset.mask``): the square's center is on a
  pixel of the object, not just inside its box.

Next to each share, its **chance** level: the share a position drawn uniformly from the grid
would get, the pointing game of a map equal on every center pixel (the mean over images of the
fraction of grid positions meeting the criterion). A large square overlaps the box from almost
everywhere, so the overlap share means something only well above its chance level. Rows are
given for all images and for the correctly classified ones (on a misclassified image the true
class's probability is low everywhere and its minimum says little). ``drop`` is the mean of
``p(unoccluded) - p(min)``; ``flat`` the share of images whose probability map varies by less
than 1e-6 (no minimum to speak of).

Ties. When several positions share the lowest probability, the pointing game counts the
fraction of them that meet the criterion (the expected hit of a random tie-break); a map with
``p = 1`` everywhere (``1 - p`` all zero) counts as tied everywhere, i.e. its chance level.
Before the pointing game did this check (2026-11), the first position in row-major order counted
alone; the two agree wherever the lowest probability is unique, and the ``ties`` column counts
the images where it is not.

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
from zflight.analysis.evaluation import pointing_game
from zflight.attribution.occlusion import OcclusionMaps, occlusion_maps


def center_map(maps: OcclusionMaps) -> torch.Tensor:
    """Return ``[N, H, W]`` float64: ``1 - p`` of each position on the pixel under its square's center.

    Every other pixel is 0, so the map's maximum is the position of lowest probability. The
    center of the square at ``(sx, sy)`` is ``(sx + size/2, sy + size/2)``; the pixel under it is
    ``(sx + size // 2, sy + size // 2)`` (pixel ``j`` covers ``[j, j+1)``). Distinct positions
    have distinct centers, so no two positions share a pixel.

    Args:
        maps: occlusion maps of ``N`` images.

    Returns:
        The maps, ready for :func:`zflight.analysis.evaluation.pointing_game`.

    Example:
        >>> center_map(maps).shape  # doctest: +SKIP
        torch.Size([200, 64, 64])
    """
    n = maps.prob.shape[0]
    h, w = maps.image_size
    out = torch.zeros(n, h, w, dtype=torch.float64)
    rows = maps.rows.long() + maps.size // 2
    cols = maps.cols.long() + maps.size // 2
    # In float64: 1 - p keeps apart probabilities that float32 would round to the same 1 - p.
    out[:, rows[:, None], cols[None, :]] = 1.0 - maps.prob.double()
    return out


def box_masks(boxes: torch.Tensor, image_size: tuple[int, int], grow: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Return ``[N, H, W]`` bool: each box ``(x0, y0, x1, y1)`` (exclusive ends), grown.

    Args:
        boxes: ``[N, 4]`` integer boxes.
        image_size: ``(H, W)``.
        grow: ``(before, after)``: the box becomes ``[x0 - before, x1 + after)`` (likewise in y),
            clipped to the image.

    Returns:
        The masks.

    Example:
        >>> box_masks(torch.tensor([[1, 0, 3, 1]]), (2, 4)).int()
        tensor([[[0, 1, 1, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    h, w = image_size
    before, after = grow
    x0, y0, x1, y1 = (boxes[:, k, None, None].long() for k in range(4))
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    return (xs >= x0 - before) & (xs < x1 + after) & (ys >= y0 - before) & (ys < y1 + after)


def object_hits(
    maps: OcclusionMaps, boxes: torch.Tensor, masks: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Compare each image's lowest-probability square with its object, by the pointing game.

    Args:
        maps: occlusion maps of ``N`` images.
        boxes: ``[N, 4]`` object boxes ``(x0, y0, x1, y1)``, exclusive ends.
        masks: ``[N, H, W]`` bool exact object masks, or ``None``.

    Returns:
        ``overlap`` and ``center`` (``[N]`` float64: the pointing game of :func:`center_map`
        against the grown box and the box, 1.0 / 0.0 where the lowest probability is unique),
        ``chance_overlap`` and ``chance_center`` (``[N]``: the fraction of grid positions meeting
        each), ``drop`` (``[N]``: unoccluded minus lowest probability), ``flat`` and ``ties``
        (``[N]`` bool); with ``masks`` also ``mask`` and ``chance_mask``.

    Example:
        >>> hits = object_hits(maps, torch.tensor([ds.box(i) for i in range(n)]))  # doctest: +SKIP
    """
    size = maps.size
    points = center_map(maps)
    prob = maps.prob.flatten(1).double()
    flat_map = (points.flatten(1).amax(dim=1) == 0)[:, None, None]
    # Every center pixel equal: the pointing game then gives the share of positions in the mask.
    uniform = torch.zeros_like(points)
    uniform[:, (maps.rows.long() + size // 2)[:, None], (maps.cols.long() + size // 2)[None, :]] = 1.0
    # A map with p = 1 at every position has no maximum (pointing_game refuses an all-zero map):
    # every position ties, which is the chance level.
    points = torch.where(flat_map, uniform, points)
    shape = tuple(maps.image_size)
    targets = {
        "overlap": box_masks(boxes, shape, grow=((size + 1) // 2 - 1, size // 2)),
        "center": box_masks(boxes, shape),
    }
    if masks is not None:
        targets["mask"] = masks
    hits: dict[str, torch.Tensor] = {}
    for name, mask in targets.items():
        hits[name] = pointing_game(points, mask)
        hits[f"chance_{name}"] = pointing_game(uniform, mask)
    lowest = prob.amin(dim=1)
    hits["drop"] = maps.base_prob.double() - lowest
    # A flat map has no meaningful minimum.
    hits["flat"] = (prob.amax(dim=1) - lowest) < 1e-6
    hits["ties"] = (prob == lowest[:, None]).sum(dim=1) > 1
    return hits


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
    masks = torch.stack([ds.mask(i) for i in range(n)]) if hasattr(ds, "mask") else None
    h = images.shape[-1]
    sizes = args.size or [default_geometry(h, h)[0]]

    print(f"# occlusion minimum on the object: {args.ckpt_path}")
    print(f"# {n} validation images at {h} px; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}")
    header = (f"{'size':>4} {'stride':>6} {'grid':>5} {'images':>14} {'n':>4} {'overlap':>8} "
              f"{'chance':>7} {'center':>7} {'chance':>7} {'mask':>7} {'chance':>7} {'drop':>6} "
              f"{'flat':>5} {'ties':>5} {'time s':>7}")
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
        hits = object_hits(maps, boxes, masks)
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
                  f"{row['chance_center']:7.1%} {row.get('mask', float('nan')):7.1%} "
                  f"{row.get('chance_mask', float('nan')):7.1%} {row['drop']:6.3f} {row['flat']:5.0%} "
                  f"{row['ties']:5.0%} {seconds:7.1f}")
    print(f"# accuracy of the unoccluded images: {float(correct.double().mean()):.1%}")
    return rows


if __name__ == "__main__":
    main()
