"""``python -m zflight correspondence``: the paper's Table 1 on the embedded data set, PNG + JSON.

The embedded shapes know their parts (:meth:`zflight.data.ShapesDataset.keypoints`: an
arrow's ``tip``, ``tail``, ``barb0``, ``barb1``, ``center``, …), so "the same part hidden in
every image" is a square of side ``--size`` centered on the same landmark in each image of one
class, like the paper's eye and nose masks on dog faces. Each class asked for gets a table
(parts, then random masks of the same size; columns: layers; cells: mean ± std over draws)
printed, drawn and written to JSON; see :mod:`zflight.analysis.correspondence` for the
definitions.

Usage::

    python -m zflight correspondence --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/correspondence --classes arrow heart --num_images 20 --repeats 20

writes ``correspondence.png`` (per class: an image with its masks, Δ per pair as bars with
± std) and ``correspondence.json`` (per class: the table, every draw, the images used).

Image files have no known landmarks, so each comes with the center of the part to hide::

    python -m zflight correspondence --ckpt_path last.ckpt --out out/corr \\
        --images a.png b.png c.png --points 20,14 31,40 12,50 --part_name eye

``--points`` are ``X,Y`` pixel coordinates (column, row; from the top left) in the model's
input, i.e. after :func:`~zflight.cli._common.load_image_files` has resized (and, for an
image-folder data module, center-cropped) the file, one per file in order. The part masks are
the squares of side ``--size`` that :func:`~zflight.analysis.correspondence.keypoint_masks`
makes, centered on the points; the random rows are as for data set images.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zflight.cli._common import (
    ArgumentParser,
    subcommand_parser,
    AnalysisError,
    check_out,
    common_arguments,
    embedded_dataset,
    load_image_files,
    load_network,
    output_dir,
    read_ckpt,
    rebuild_data,
    run_cli,
    write_json,
)
from zflight.analysis.correspondence import Correspondence, correspondence, keypoint_masks
from zflight.figures import save_figure

__all__ = ["correspondence_figure", "main"]


def correspondence_figure(
    results: dict[str, Correspondence],
    displays: dict[str, torch.Tensor],
    masks: dict[str, dict[str, torch.Tensor]],
) -> Any:
    """Return a matplotlib ``Figure``: per class, one image with its part masks and Δ bars.

    Bars show ``delta_per_pair`` (Δ divided by the n(n−1) ordered pairs, so it reads as the
    share of features whose change differs in sign between two images), mean ± std over the
    draws, one group per layer, one bar per part and one for random masks (hatched).

    Args:
        results: class name → its :class:`~zflight.analysis.correspondence.Correspondence`.
        displays: class name → ``[3, H, W]`` one of its images in [0, 1].
        masks: class name → part name → ``[H, W]`` that image's mask of the part.

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas.

    Example:
        >>> fig = correspondence_figure({"arrow": res}, {"arrow": img}, {"arrow": m})  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    classes = list(results)
    fig = Figure(figsize=(9.5, 2.9 * len(classes) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(classes), 2, squeeze=False, width_ratios=[1, 2.4]))
    for row, cls in zip(axes, classes):
        res = results[cls]
        parts = [r for r in res.rows if r != "random"]
        colors = {p: f"C{k % 10}" for k, p in enumerate(parts)}
        colors["random"] = "0.6"
        ax = row[0]
        ax.imshow(displays[cls].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        for p in parts:
            m = masks[cls][p]
            ys, xs = m.any(dim=1).nonzero()[:, 0], m.any(dim=0).nonzero()[:, 0]
            if ys.numel():
                ax.add_patch(Rectangle((int(xs[0]) - 0.5, int(ys[0]) - 0.5), int(xs[-1] - xs[0]) + 1,
                                       int(ys[-1] - ys[0]) + 1, fill=False, ec=colors[p], lw=1.5))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{cls}: {res.num_images} images, draws of {res.subset_size}", fontsize=9)
        ax = row[1]
        rows = parts + ["random"]
        width = 0.8 / len(rows)
        for j, layer in enumerate(res.layers):
            for k, r in enumerate(rows):
                ax.bar(j + (k - (len(rows) - 1) / 2) * width, res.mean(r, layer, per_pair=True), width,
                       yerr=res.std(r, layer, per_pair=True), color=colors[r], capsize=2,
                       hatch="//" if r == "random" else None, edgecolor="0.3", lw=0.5)
        ax.set_xticks(range(len(res.layers)), [n.rsplit(".", 1)[-1] for n in res.layers], fontsize=8)
        ax.set_ylabel("Δ / n(n−1)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(handles=[Patch(color=colors[r], label=r) for r in rows], fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_title("sign disagreement of feature changes (lower: part found consistently)", fontsize=9)
    return fig


def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "correspondence",
        "Correspondence of object parts across images (Table 1): Δ for part and random masks.",
    )
    common_arguments(p, indices=None, images=True)
    p.add_argument("--points", nargs="+", default=None, metavar="X,Y",
                   help="with --images: the part's center in each file, in pixels of the model's input "
                        "(after the resize of load_image_files), one per file")
    p.add_argument("--part_name", default=None, help="with --images: the part's name (default: part)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="class names of the embedded data set, or 'all' (default: arrow)")
    p.add_argument("--parts", nargs="+", default=None,
                   help="landmarks to hide (default: every landmark of the class)")
    p.add_argument("--size", type=int, default=None, help="mask side in pixels (default: image side // 5)")
    p.add_argument("--num_images", type=int, default=None,
                   help="images of each class used: the first ones of the split (default: 20)")
    p.add_argument("--subset_size", type=int, default=None,
                   help="images per draw (default: 5, the paper's; with --images at most their number)")
    p.add_argument("--repeats", type=int, default=20, help="random draws for mean ± std")
    p.add_argument("--layers", nargs="+", default=["relu5", "relu7"],
                   help="layers (default: relu5 relu7, the paper's layers 5 and 7)")
    p.add_argument("--fill", type=float, default=0.0, help="value of hidden pixels (0: data mean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=64)
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``python -m zflight correspondence``; returns the output folder.

    Args:
        argv: the arguments after ``correspondence``.

    Returns:
        The output folder, holding ``correspondence.png`` and ``correspondence.json``.

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "out/corr", "--classes", "arrow"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


def _run(args: argparse.Namespace) -> Path:
    if args.images is not None:
        return _run_files(args)
    for flag in ("points", "part_name"):
        if getattr(args, flag) is not None:
            raise AnalysisError(f"--{flag} goes with --images (data set images use their known landmarks)")
    args.classes = args.classes or ["arrow"]
    args.num_images = 20 if args.num_images is None else args.num_images
    args.subset_size = 5 if args.subset_size is None else args.subset_size
    check_out(args.out, args.overwrite)
    model, hparams, data_hp = load_network(args.ckpt_path)
    dataset = embedded_dataset(hparams, data_hp, args.split)
    classes = list(dataset.classes) if args.classes == ["all"] else list(args.classes)
    unknown = [c for c in classes if c not in dataset.classes]
    if unknown:
        raise AnalysisError(f"--classes: {unknown[0]!r} is not a class; the classes are {', '.join(dataset.classes)}")
    side = dataset.image_size
    size = args.size if args.size is not None else max(1, side // 5)
    if not 1 <= size <= side:
        raise AnalysisError(f"--size must be in 1..{side} (the image side), got {size}")
    if args.num_images < 2:
        raise AnalysisError(f"--num_images must be >= 2, got {args.num_images}")

    results: dict[str, Correspondence] = {}
    displays, shown_masks, record = {}, {}, {}
    for cls in classes:
        label = dataset.classes.index(cls)
        indices = [i for i, t in enumerate(dataset.targets) if t == label][: args.num_images]
        if len(indices) < max(2, args.subset_size):
            raise AnalysisError(
                f"--num_images: the {args.split} split has only {len(indices)} images of {cls!r}, "
                f"fewer than --subset_size={args.subset_size}"
            )
        landmarks = sorted(dataset.keypoints(indices[0]))
        parts = list(args.parts) if args.parts else landmarks
        missing = [p for p in parts if p not in landmarks]
        if missing:
            raise AnalysisError(f"--parts: {cls!r} has no landmark {missing[0]!r}; it has {', '.join(landmarks)}")
        masks = {p: keypoint_masks(dataset, indices, p, size) for p in parts}
        images = torch.stack([dataset[i][0] for i in indices])
        res = correspondence(model, images, masks, layers=args.layers, fill=args.fill,
                             subset_size=args.subset_size, repeats=args.repeats, seed=args.seed,
                             batch_size=args.batch_size)
        results[cls] = res
        displays[cls] = dataset.denormalize(images[0])
        shown_masks[cls] = {p: m[0] for p, m in masks.items()}
        record[cls] = {"indices": indices, "parts": parts, "size": size, "table": res.table(),
                       "table_per_pair": res.table(per_pair=True), **res.to_dict()}
        print(f"\n{cls} (Δ = sum over ordered pairs of normalized Hamming distances; "
              f"{res.subset_size} images per draw, {res.repeats} draws):\n{res.table()}")
    fig = correspondence_figure(results, displays, shown_masks)
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_figure(fig, tmp / "correspondence.png")
        write_json({"ckpt_path": str(args.ckpt_path), "split": args.split, "classes": record},
                   tmp / "correspondence.json")
    print(f"\nzflight correspondence: wrote {Path(args.out) / 'correspondence.png'} and correspondence.json")
    return Path(args.out)


def _parse_points(values: Sequence[str]) -> list[tuple[float, float]]:
    """``["X,Y", ...]`` → ``[(x, y), ...]``."""
    points = []
    for v in values:
        parts = v.split(",")
        try:
            x, y = (float(t) for t in parts)
        except ValueError:
            raise AnalysisError(f"--points: {v!r} is not X,Y (two numbers, e.g. 20,14)") from None
        points.append((x, y))
    return points


class _Points:
    """One named landmark per image, as :func:`keypoint_masks` reads them."""

    def __init__(self, name: str, points: Sequence[tuple[float, float]]) -> None:
        self.name, self.points = name, list(points)

    def keypoints(self, i: int) -> dict[str, tuple[float, float]]:
        return {self.name: self.points[i]}


def _run_files(args: argparse.Namespace) -> Path:
    """``--images`` with ``--points``: one part, centered on a given point in each file."""
    for flag in ("classes", "parts", "num_images"):
        if getattr(args, flag) is not None:
            raise AnalysisError(f"--{flag} goes with data set images; with --images every file is used "
                                "and --points gives the part")
    n = len(args.images)
    if n < 2:
        raise AnalysisError(f"--images: give at least 2 image files to compare, got {n}")
    if args.points is None:
        raise AnalysisError("--points: give the part's center X,Y in each --images file (image files "
                            "have no known landmarks)")
    if len(args.points) != n:
        raise AnalysisError(f"--points: one X,Y per --images file ({n}), got {len(args.points)}")
    points = _parse_points(args.points)
    subset_size = min(5, n) if args.subset_size is None else args.subset_size
    if not 2 <= subset_size <= n:
        raise AnalysisError(f"--subset_size must be in 2..{n} (the number of --images files), got {subset_size}")
    part = args.part_name if args.part_name is not None else "part"
    if not part.strip() or part == "random":
        raise AnalysisError(f"--part_name: {part!r} cannot name a part (nor 'random', the random row)")
    check_out(args.out, args.overwrite)
    module, dm_hparams = read_ckpt(args.ckpt_path)
    model = module.model.eval()
    image_size = int(module.hparams.get("image_size", 64))
    datamodule = rebuild_data(dm_hparams, image_size)
    images, shown, _ = load_image_files(args.images, datamodule, image_size)
    h, w = images.shape[-2:]
    if h != w:
        raise AnalysisError(f"--images: the model's input is {w}x{h}, not square; part masks need a square input")
    for f, v, (x, y) in zip(args.images, args.points, points):
        if not (0 <= x < w and 0 <= y < h):
            raise AnalysisError(f"--points: {v} is outside the {w}x{h} model input of {f} "
                                f"(x in [0, {w}), y in [0, {h}))")
    size = args.size if args.size is not None else max(1, h // 5)
    if not 1 <= size <= h:
        raise AnalysisError(f"--size must be in 1..{h} (the image side), got {size}")
    masks = {part: keypoint_masks(_Points(part, points), range(n), part, size, image_size=h)}
    res = correspondence(model, images, masks, layers=args.layers, fill=args.fill, subset_size=subset_size,
                         repeats=args.repeats, seed=args.seed, batch_size=args.batch_size)
    title = "image files"
    fig = correspondence_figure({title: res}, {title: shown[0]}, {title: {part: masks[part][0]}})
    record = {
        "ckpt_path": str(args.ckpt_path),
        "images": [str(Path(f)) for f in args.images],
        "points": [list(pt) for pt in points],
        "part_name": part,
        "size": size,
        "table": res.table(),
        "table_per_pair": res.table(per_pair=True),
        **res.to_dict(),
    }
    print(f"\n{title} (Δ = sum over ordered pairs of normalized Hamming distances; "
          f"{res.subset_size} images per draw, {res.repeats} draws):\n{res.table()}")
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_figure(fig, tmp / "correspondence.png")
        write_json(record, tmp / "correspondence.json")
    print(f"\nzflight correspondence: wrote {Path(args.out) / 'correspondence.png'} and correspondence.json")
    return Path(args.out)
