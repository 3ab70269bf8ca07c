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

Part landmarks are known only in the embedded data set. A checkpoint trained on it reads them;
any other model (``--model``, :func:`zflight.cli._common.source_arguments`) or a checkpoint
trained on a folder has none, and says so in one line: give image files with the center of the
part to hide in each instead::

    python -m zflight correspondence --ckpt_path last.ckpt --out out/corr \\
        --images a.png b.png c.png --points 20,14 31,40 12,50 --part_name eye
    python -m zflight correspondence --model resnet50 --weights DEFAULT --out out/corr \\
        --images faces/ --points 100,80 96,90 110,84 --part_name eye

``--images`` are image files or a folder (its images in sorted order). ``--points`` are ``X,Y``
pixel coordinates (column, row; from the top left) in the model's input, i.e. after the model's
preprocessing has resized (shorter side) and centre-cropped the file, one per image in order.
The part masks are the squares of side ``--size`` that
:func:`~zflight.analysis.correspondence.keypoint_masks` makes, centered on the points; the random
rows are as for data set images.

The layers (``--layers`` names others): ``relu5`` and ``relu7`` in zflight's networks (the paper's
layers 5 and 7); in any other model its last two default layers
(:func:`zflight.sources.default_layers`, each resolution stage's output: ResNet ``layer3`` and
``layer4``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zflight.analysis.correspondence import (
    Correspondence,
    correspondence,
    keypoint_masks,
)
from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    default_device,
    paper_or_stage_layers,
    load_sources,
    output_dir,
    run_cli,
    source_arguments,
    subcommand_parser,
    write_json,
)
from zflight.attribution._layers import layer_label
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
        ax.set_xticks(range(len(res.layers)), [layer_label(n) for n in res.layers], fontsize=8)
        ax.set_ylabel("Δ / n(n−1)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(handles=[Patch(color=colors[r], label=r) for r in rows], fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_title("sign disagreement of feature changes (lower: part found consistently)", fontsize=9)
    return fig


# zflight's networks: the paper's layers 5 and 7.
_PAPER_LAYERS = ["relu5", "relu7"]
_LANDMARKS = ("--points X,Y (the part's center in each image, in pixels of the model's input)")


def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "correspondence",
        "Correspondence of object parts across images (Table 1): Δ for part and random masks.",
    )
    # Its --classes name classes of the embedded data set; the model's class names are not used.
    source_arguments(p, images="files", class_names=False)
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of the embedded data set the images come from (default: val)")
    p.add_argument("--points", nargs="+", default=None, metavar="X,Y",
                   help="with --images: the part's center in each image, in pixels of the model's input "
                        "(after its resize and centre crop), one per image")
    p.add_argument("--part_name", default=None, help="with --images: the part's name (default: part)")
    p.add_argument("--classes", nargs="+", default=None, dest="shape_classes",
                   help="class names of the embedded data set, or 'all' (default: arrow)")
    p.add_argument("--parts", nargs="+", default=None,
                   help="landmarks to hide (default: every landmark of the class)")
    p.add_argument("--size", type=int, default=None, help="mask side in pixels (default: image side // 5)")
    p.add_argument("--num_images", type=int, default=None,
                   help="images of each class used: the first ones of the split (default: 20)")
    p.add_argument("--subset_size", type=int, default=None,
                   help="images per draw (default: 5, the paper's; with --images at most their number)")
    p.add_argument("--repeats", type=int, default=20, help="random draws for mean ± std")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers (default: relu5 relu7, the paper's layers 5 and 7, in zflight's networks; "
                        "else the last two default layers)")
    p.add_argument("--fill", type=float, default=0.0, help="value of hidden pixels (0: data mean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
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
    if args.model is not None:
        raise AnalysisError(f"--model: correspondence needs part landmarks, which only the embedded shapes data "
                            f"set has (a --ckpt_path trained on it); for {args.model}, give image files with "
                            f"--images and {_LANDMARKS}")
    for flag in ("points", "part_name"):
        if getattr(args, flag) is not None:
            raise AnalysisError(f"--{flag} goes with --images (data set images use their known landmarks)")
    args.shape_classes = args.shape_classes or ["arrow"]
    args.num_images = 20 if args.num_images is None else args.num_images
    args.subset_size = 5 if args.subset_size is None else args.subset_size
    check_out(args.out, args.overwrite)
    device = default_device(args.device)
    source, _, _ = load_sources(args, images=False)
    dataset = _embedded(source, args.split)
    model = _to(source.model, device)
    layers = _layers(args.layers, source)
    classes = list(dataset.classes) if args.shape_classes == ["all"] else list(args.shape_classes)
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
        res = correspondence(model, images, masks, layers=layers, fill=args.fill,
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
        write_json({"ckpt_path": str(args.ckpt_path), "model": source.facts(), "split": args.split,
                    "layers": layers, "classes": record}, tmp / "correspondence.json")
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
    """``--images`` with ``--points``: one part, centered on a given point in each image."""
    for option, flag in (("shape_classes", "classes"), ("parts", "parts"), ("num_images", "num_images")):
        if getattr(args, option) is not None:
            raise AnalysisError(f"--{flag} goes with data set images; with --images every file is used "
                                "and --points gives the part")
    part = args.part_name if args.part_name is not None else "part"
    if not part.strip() or part == "random":
        raise AnalysisError(f"--part_name: {part!r} cannot name a part (nor 'random', the random row)")
    check_out(args.out, args.overwrite)
    device = default_device(args.device)
    source, dataset, _ = load_sources(args)
    n = len(dataset)
    if n < 2:
        raise AnalysisError(f"--images: give at least 2 image files to compare, got {n}")
    if args.points is None:
        raise AnalysisError(f"--points: give the part's center X,Y in each of the {n} --images (image files "
                            "have no known landmarks)")
    if len(args.points) != n:
        raise AnalysisError(f"--points: one X,Y per --images file ({n}), got {len(args.points)}")
    points = _parse_points(args.points)
    subset_size = min(5, n) if args.subset_size is None else args.subset_size
    if not 2 <= subset_size <= n:
        raise AnalysisError(f"--subset_size must be in 2..{n} (the number of --images files), got {subset_size}")
    side = source.image_size
    for i, (v, (x, y)) in enumerate(zip(args.points, points)):
        if not (0 <= x < side and 0 <= y < side):
            raise AnalysisError(f"--points: {v} is outside the {side}x{side} model input of {dataset.name(i)} "
                                f"(x in [0, {side}), y in [0, {side}))")
    size = args.size if args.size is not None else max(1, side // 5)
    if not 1 <= size <= side:
        raise AnalysisError(f"--size must be in 1..{side} (the image side), got {size}")
    layers = _layers(args.layers, source)
    model = _to(source.model, device)
    images = torch.stack([dataset[i][0] for i in range(n)])
    masks = {part: keypoint_masks(_Points(part, points), range(n), part, size, image_size=side)}
    res = correspondence(model, images, masks, layers=layers, fill=args.fill, subset_size=subset_size,
                         repeats=args.repeats, seed=args.seed, batch_size=args.batch_size)
    title = "image files"
    shown = dataset.denormalize(images[0])
    fig = correspondence_figure({title: res}, {title: shown}, {title: {part: masks[part][0]}})
    record = {
        "ckpt_path": str(args.ckpt_path) if args.ckpt_path is not None else None,
        "model": source.facts(),
        "images": [str(f) for f in dataset.files],
        "points": [list(pt) for pt in points],
        "part_name": part,
        "size": size,
        "layers": layers,
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


def _embedded(source: Any, split: str) -> Any:
    """The embedded data set a zflight checkpoint was trained on; one line when it was not."""
    from zflight.sources import default_dataset

    data_hp = source.data_hp
    class_path = str(data_hp.get("_class_path", "zflight.data.ShapesDataModule"))
    where = data_hp.get("root") or data_hp.get("data_dir") or data_hp.get("train_dir")
    if where or not class_path.endswith("ShapesDataModule"):
        raise AnalysisError(f"--ckpt_path: the checkpoint was trained on {where or class_path.rsplit('.', 1)[-1]}, "
                            f"whose images have no part landmarks; give image files with --images and {_LANDMARKS}")
    return default_dataset(source, split)


def _layers(given: Sequence[str] | None, source: Any) -> list[str]:
    """``--layers`` (checked), else the paper's layers 5 and 7 in zflight's networks, else the
    model's last two default layers (printed)."""
    return paper_or_stage_layers(given, source, paper=_PAPER_LAYERS, paper_why="the paper's layers 5 and 7",
                                 pick=lambda stages: stages[-2:],
                                 pick_why="the last two default layers (each resolution stage's output)")


def _to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
        raise AnalysisError(f"--device: cannot use {device}: {err}".splitlines()[0]) from None
