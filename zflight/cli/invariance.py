"""``python -m zflight invariance``: the paper's Fig. 5 from a checkpoint, as PNG + JSON.

:func:`invariance_figure` draws :class:`~zflight.analysis.invariance.InvarianceCurves` (also
used by the :class:`~zflight.callbacks.invariance.InvarianceFigures` callback, so a figure made
while training and one made from a checkpoint look the same); :func:`main` is the subcommand.

The plumbing the subcommands share (loading a checkpoint, rebuilding its embedded data set,
writing an output folder all at once, one-line errors) is in :mod:`zflight.cli._common`;
its names stay importable from here.

Usage::

    python -m zflight invariance --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/invariance [--indices 0 1 2 3 4 | --images a.png b.png --labels ring 3]

writes ``out/invariance/invariance.png`` (one row per transformation: examples, one column per
layer, the true-label probability) and ``out/invariance/invariance.json`` (the curves).

Images come from the checkpoint's embedded data set by index (``--indices``, with their true
labels), or from image files (``--images``, read as
:func:`~zflight.cli._common.load_image_files` does for every subcommand) with their true
classes given by ``--labels`` (class names or numbers, one per file; required, since the
figure plots the probability of the true label).
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
    class_indices,
    common_arguments,
    data_classes,
    display_images,
    embedded_dataset,
    load_image_files,
    load_network,
    output_dir,
    pick_images,
    read_ckpt,
    rebuild_data,
    run_cli,
    write_json,
)
from zflight.analysis.invariance import (
    TRANSFORMS,
    InvarianceCurves,
    default_amounts,
    invariance_curves,
    transform_images,
)
from zflight.figures import figure_to_tensor, save_figure

__all__ = ["invariance_figure", "main", "load_classifier", "embedded_dataset", "output_dir",
           "save_figure", "figure_to_tensor", "write_json", "AnalysisError"]


# The shared plumbing lives in zflight.cli._common; its names stay importable from here.
load_classifier = load_network


# ------------------------------------------------------------------------------ the figure
def invariance_figure(
    curves: Sequence[InvarianceCurves],
    *,
    examples: dict[str, torch.Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    relative: bool = True,
    titles: Sequence[str] | None = None,
) -> Any:
    """Return a matplotlib ``Figure`` of the paper's Fig. 5: one row per transformation.

    Columns: (when ``examples`` are given) the first image at a few amounts; then, per layer,
    the feature distance against the amount, one line per image; last, the probability of the
    true label against the amount.

    Args:
        curves: one :class:`InvarianceCurves` per transformation (same images).
        examples: transform name → ``[K, 3, H, W]`` display images in [0, 1] (e.g. one image
            at K amounts); ``None`` leaves the column out.
        class_names: names of the classes, for the legend.
        relative: plot ``relative`` distances (divided by the original's feature norm) rather
            than the raw ``distance``.
        titles: one legend entry per image (default: its class name).

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas (no pyplot, works headless).

    Raises:
        ValueError: ``curves`` is empty or its entries disagree on the images.

    Example:
        >>> fig = invariance_figure([curves_t, curves_s, curves_r])  # doctest: +SKIP
        >>> save_figure(fig, "invariance.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = list(curves)
    if not curves:
        raise ValueError("curves must hold at least one InvarianceCurves")
    n = curves[0].prob.shape[0]
    if any(c.prob.shape[0] != n for c in curves):
        raise ValueError("curves must all describe the same images")
    layers = curves[0].layers
    with_examples = bool(examples)
    ncols = int(with_examples) + len(layers) + 1
    fig = Figure(figsize=(3.2 * ncols, 2.7 * len(curves) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(curves), ncols, squeeze=False))
    labels = curves[0].labels.tolist()
    names = list(titles) if titles is not None else [
        str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else f"class {k}"
        for k in labels
    ]
    units = {"translate": "vertical shift (px)", "scale": "scale factor", "rotate": "rotation (deg)"}
    colors = [f"C{i % 10}" for i in range(n)]
    for row, c in zip(axes, curves):
        col = 0
        x = c.amounts.numpy()
        if with_examples:
            ax = row[col]
            col += 1
            shown = examples.get(c.transform) if examples else None
            if shown is not None:
                strip = torch.cat(list(shown.detach().float().clamp(0, 1).cpu()), dim=-1)
                ax.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{c.transform}", fontsize=9)
        for name in c.layers:
            ax = row[col]
            col += 1
            values = (c.relative if relative else c.distance)[name].numpy()
            for i in range(n):
                ax.plot(x, values[i], "-o", ms=2.5, lw=1.2, color=colors[i], label=names[i])
            short = name.rsplit(".", 1)[-1]
            ax.set_title(f"{short}: {'relative ' if relative else ''}distance", fontsize=9)
            ax.set_xlabel(units[c.transform], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(bottom=0)
        ax = row[col]
        for i in range(n):
            ax.plot(x, c.prob[i].numpy(), "-o", ms=2.5, lw=1.2, color=colors[i], label=names[i])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("p(true class)", fontsize=9)
        ax.set_xlabel(units[c.transform], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def example_strip(image: torch.Tensor, transform: str, amounts: Sequence[float], *,
                  fill: float = 0.0, count: int = 5) -> torch.Tensor:
    """Return ``[K, C, H, W]``: one image under ``count`` evenly spread amounts, for display.

    Args:
        image: ``[C, H, W]`` in the model's input space.
        transform: the transformation.
        amounts: its amounts (``count`` of them are picked evenly).
        fill: value of uncovered pixels.
        count: how many examples.

    Returns:
        The transformed images, still in the model's input space (denormalize for display).

    Example:
        >>> example_strip(torch.zeros(3, 8, 8), "rotate", [0, 90, 180], count=2).shape
        torch.Size([2, 3, 8, 8])
    """
    picks = np.unique(np.linspace(0, len(amounts) - 1, min(count, len(amounts))).round().astype(int))
    return torch.cat([transform_images(image[None], transform, float(amounts[k]), fill=fill)  # type: ignore[arg-type]
                      for k in picks])


# ------------------------------------------------------------------------------- the command
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "invariance",
        "Invariance of features and output to translation, scale and rotation (Fig. 5).",
    )
    common_arguments(p, indices=[0, 1, 2, 3, 4], images=True)
    p.add_argument("--labels", nargs="+",
                   help="true class (name or number) of each --images file; required with --images")
    p.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    p.add_argument("--layers", nargs="+", default=["norm1", "relu7"],
                   help="layers whose features are compared (default: norm1 relu7, the paper's 1 and 7)")
    for t in TRANSFORMS:
        p.add_argument(f"--{t}_amounts", type=float, nargs="+", default=None,
                       help=f"amounts of {t} (default: zflight.analysis.invariance.default_amounts)")
    p.add_argument("--fill", type=float, default=0.0, help="value of uncovered pixels (0: data mean)")
    p.add_argument("--raw", action="store_true", help="plot raw distances instead of relative ones")
    p.add_argument("--batch_size", type=int, default=64)
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``python -m zflight invariance``; returns the output folder.

    Args:
        argv: the arguments after ``invariance``.

    Returns:
        The output folder, holding ``invariance.png`` and ``invariance.json``.

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "out/invariance"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


def _run(args: argparse.Namespace) -> Path:
    if args.images is not None and args.labels is None:
        raise AnalysisError("--labels: give the true class (name or number) of each --images file; "
                            "the figure plots the probability of the true label")
    if args.labels is not None and args.images is None:
        raise AnalysisError("--labels goes with --images (data set images use their true labels)")
    check_out(args.out, args.overwrite)
    if args.images is not None:
        model, images, labels, class_names, denormalize, source = _from_files(args)
    else:
        model, hparams, data_hp = load_network(args.ckpt_path)
        dataset = embedded_dataset(hparams, data_hp, args.split)
        images, labels = pick_images(dataset, args.indices)
        class_names, denormalize = dataset.classes, dataset.denormalize
        source = {"split": args.split, "indices": list(args.indices)}
    all_curves, examples = [], {}
    for t in args.transforms:
        amounts = getattr(args, f"{t}_amounts") or default_amounts(t, images.shape[-2])
        try:
            curves = invariance_curves(model, images, labels, transform=t, amounts=amounts,
                                       layers=args.layers, fill=args.fill, batch_size=args.batch_size)
        except ValueError as err:
            if args.images is not None and str(err).startswith("labels"):
                raise AnalysisError(f"--{err}") from None  # e.g. a class number out of range
            raise
        all_curves.append(curves)
        examples[t] = denormalize(example_strip(images[0], t, amounts, fill=args.fill))
    titles = None if args.images is None else [
        f"{Path(f).name}: {_class_name(class_names, int(k))}" for f, k in zip(args.images, labels)
    ]
    fig = invariance_figure(all_curves, examples=examples, class_names=class_names,
                            relative=not args.raw, titles=titles)
    record = {
        "ckpt_path": str(args.ckpt_path),
        **source,
        "class_names": [_class_name(class_names, int(k)) for k in labels],
        "distance_note": "distance: ||f(T(x)) - f(x)||_2 over the flattened layer output; "
                         "relative: distance / ||f(x)||_2",
        "curves": [c.to_dict() for c in all_curves],
    }
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_figure(fig, tmp / "invariance.png")
        write_json(record, tmp / "invariance.json")
    print(f"zflight invariance: wrote {Path(args.out) / 'invariance.png'} and invariance.json")
    return Path(args.out)


def _from_files(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.Tensor, list[str] | None, Any, dict]:
    """``--images`` with ``--labels``: the network, images, labels, class names, denormalizer, source."""
    module, dm_hparams = read_ckpt(args.ckpt_path)
    model = module.model.eval()
    image_size = int(module.hparams.get("image_size", 64))
    datamodule = rebuild_data(dm_hparams, image_size)
    class_names = data_classes(datamodule)
    images, _, _ = load_image_files(args.images, datamodule, image_size)
    labels = torch.tensor(class_indices(args.labels, len(args.images), class_names, "--labels"))
    source = {"images": [str(Path(f)) for f in args.images]}
    return model, images, labels, class_names, lambda x: display_images(x, datamodule), source


def _class_name(class_names: Sequence[str] | None, k: int) -> str:
    return str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else f"class {k}"
