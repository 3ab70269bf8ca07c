"""``python -m zflight invariance``: the paper's Fig. 5 from a checkpoint, as PNG + JSON.

:func:`invariance_figure` draws :class:`~zflight.attribution.invariance.InvarianceCurves` (also
used by the :class:`~zflight.callbacks.invariance.InvarianceFigures` callback, so a figure made
while training and one made from a checkpoint look the same); :func:`main` is the subcommand.

This module also holds the plumbing the analysis subcommands share (loading a checkpoint,
rebuilding its embedded data set, writing an output folder all at once, one-line errors):
``compare`` and ``correspondence`` import it from here.

Usage::

    python -m zflight invariance --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/invariance --indices 0 1 2 3 4

writes ``out/invariance/invariance.png`` (one row per transformation: examples, one column per
layer, the true-label probability) and ``out/invariance/invariance.json`` (the curves).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zflight.attribution.invariance import (
    TRANSFORMS,
    InvarianceCurves,
    default_amounts,
    invariance_curves,
    transform_images,
)

__all__ = ["invariance_figure", "main", "load_classifier", "embedded_dataset", "output_dir",
           "save_figure", "figure_to_tensor", "write_json", "AnalysisError"]


class AnalysisError(ValueError):
    """A bad input to an analysis subcommand; its message is the one line the user sees."""


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


# --------------------------------------------------------------------------- shared plumbing
def load_classifier(ckpt_path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load a zflight checkpoint: ``(network in eval mode, model hparams, data-module hparams)``.

    The network is ``ImageClassifier.model`` (zfnet, alexnet_zf or a torchvision model), from
    :func:`zflight.checkpoint.read_checkpoint`.

    Args:
        ckpt_path: a ``.ckpt`` written by ``python -m zflight fit``.

    Returns:
        The network, the model's hyperparameters, the data module's (empty if not saved).

    Raises:
        AnalysisError: the file is missing or is not a zflight checkpoint.

    Example:
        >>> model, hp, data_hp = load_classifier("runs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
    """
    from zflight.checkpoint import read_checkpoint

    try:
        module, data_hp = read_checkpoint(ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        raise AnalysisError(f"--ckpt_path: {err}") from None
    data_hp = {k: v for k, v in data_hp.items() if not k.startswith("_")}
    return module.model.eval(), dict(module.hparams), data_hp


def embedded_dataset(hparams: dict[str, Any], data_hp: dict[str, Any], split: str = "val") -> Any:
    """Return the split of the embedded shapes data set the checkpoint was trained with.

    ``ShapesDataModule`` draws split ``k`` (train 0, val 1, test 2) from seed ``3*seed + k``;
    the sizes, image size, seed and clutter come from the checkpoint's data-module
    hyperparameters, with the data module's defaults where missing.

    Args:
        hparams: the model's hyperparameters (for ``image_size`` when the data's are missing).
        data_hp: the data module's hyperparameters.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A :class:`~zflight.data.ShapesDataset`.

    Raises:
        AnalysisError: the checkpoint was not trained on the embedded data set, or a bad split.

    Example:
        >>> ds = embedded_dataset({"image_size": 64}, {}, "val")  # doctest: +SKIP
    """
    from zflight.data import ShapesDataset

    splits = {"train": 0, "val": 1, "test": 2}
    if split not in splits:
        raise AnalysisError(f"--split must be one of train, val, test; got {split!r}")
    # ImageFolderDataModule saves a root folder; the embedded data module does not.
    if any(k in data_hp for k in ("root", "train_dir", "data_dir")):
        raise AnalysisError("the checkpoint was not trained on the embedded shapes data set; "
                            "these subcommands read images from it by index")
    size = int(data_hp.get(f"{split}_size", {"train": 8000, "val": 1000, "test": 1000}[split]))
    return ShapesDataset(
        size,
        image_size=int(data_hp.get("image_size", hparams.get("image_size", 64))),
        seed=3 * int(data_hp.get("seed", 0)) + splits[split],
        clutter=float(data_hp.get("clutter", 1.0)),
    )


def pick_images(dataset: Any, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images [N, C, H, W], labels [N])`` of ``dataset`` at ``indices``.

    Raises:
        AnalysisError: no indices, or one out of range (the message names ``--indices``).

    Example:
        >>> x, y = pick_images(ShapesDataset(20), [0, 3])  # doctest: +SKIP
    """
    if not indices:
        raise AnalysisError("--indices: give at least one image index")
    n = len(dataset)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise AnalysisError(f"--indices: {bad[0]} is out of range for a split of {n} images (0..{n - 1})")
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


@contextlib.contextmanager
def output_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``out``; on success rename it to ``out``.

    A failure removes the temporary folder, so ``out`` is either complete or absent (or the
    previous complete result, untouched).

    Args:
        out: the folder to create.
        overwrite: replace an existing non-empty ``out`` (else that is an error).

    Raises:
        AnalysisError: ``out`` exists, is not empty, and ``overwrite`` is false; or is a file.

    Example:
        >>> with output_dir("out/invariance") as tmp:  # doctest: +SKIP
        ...     (tmp / "a.json").write_text("{}")
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AnalysisError(f"--out: {out} exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG (written under a temporary name, then renamed).

    Example:
        >>> save_figure(fig, "out/invariance.png")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
    return path


def figure_to_tensor(fig: Any) -> torch.Tensor:
    """Render a figure to a float ``[3, H, W]`` image in [0, 1] (TensorBoard's ``add_image``).

    Example:
        >>> writer.add_image("invariance", figure_to_tensor(fig), step)  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (NaN/inf become null, as JSON has neither).

    Example:
        >>> write_json({"a": 1.0}, "out/a.json")  # doctest: +SKIP
    """
    path = Path(path)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v

    path.write_text(json.dumps(clean(data), indent=1, allow_nan=False) + "\n")
    return path


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str], body: Any) -> Any:
    """Parse ``argv`` and call ``body(args)``; a bad input ends with one ``error:`` line (exit 2).

    Example:
        >>> run_cli(parser, ["--out", "x"], lambda args: None)  # doctest: +SKIP
    """
    args = parser.parse_args(list(argv))
    try:
        return body(args)
    except (FileNotFoundError, ValueError) as err:
        # AnalysisError and the attribution functions' ValueErrors name the argument
        # (--indices, layer=..., amounts ...): that line is all the user needs, no usage dump.
        parser.exit(2, f"{parser.prog}: error: {err}\n")


def common_arguments(parser: argparse.ArgumentParser, *, indices: Sequence[int] | None) -> None:
    """Add ``--ckpt_path``, ``--out``, ``--overwrite``, ``--split`` (and ``--indices``)."""
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `python -m zflight fit`")
    parser.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"],
                        help="split of the embedded data set the images come from (default: val)")
    if indices is not None:
        parser.add_argument("--indices", type=int, nargs="+", default=list(indices),
                            help=f"image indices in the split (default: {' '.join(map(str, indices))})")


# ------------------------------------------------------------------------------- the command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zflight invariance",
        description="Invariance of features and output to translation, scale and rotation (Fig. 5).",
    )
    common_arguments(p, indices=[0, 1, 2, 3, 4])
    p.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    p.add_argument("--layers", nargs="+", default=["norm1", "relu7"],
                   help="layers whose features are compared (default: norm1 relu7, the paper's 1 and 7)")
    for t in TRANSFORMS:
        p.add_argument(f"--{t}_amounts", type=float, nargs="+", default=None,
                       help=f"amounts of {t} (default: zflight.attribution.invariance.default_amounts)")
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
    return run_cli(_parser(), sys.argv[1:] if argv is None else argv, _run)


def _run(args: argparse.Namespace) -> Path:
    model, hparams, data_hp = load_classifier(args.ckpt_path)
    dataset = embedded_dataset(hparams, data_hp, args.split)
    images, labels = pick_images(dataset, args.indices)
    all_curves, examples = [], {}
    for t in args.transforms:
        amounts = getattr(args, f"{t}_amounts") or default_amounts(t, images.shape[-2])
        curves = invariance_curves(model, images, labels, transform=t, amounts=amounts,
                                   layers=args.layers, fill=args.fill, batch_size=args.batch_size)
        all_curves.append(curves)
        examples[t] = dataset.denormalize(example_strip(images[0], t, amounts, fill=args.fill))
    fig = invariance_figure(all_curves, examples=examples, class_names=dataset.classes,
                            relative=not args.raw)
    record = {
        "ckpt_path": str(args.ckpt_path),
        "split": args.split,
        "indices": list(args.indices),
        "class_names": [dataset.classes[int(k)] for k in labels],
        "distance_note": "distance: ||f(T(x)) - f(x)||_2 over the flattened layer output; "
                         "relative: distance / ||f(x)||_2",
        "curves": [c.to_dict() for c in all_curves],
    }
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_figure(fig, tmp / "invariance.png")
        write_json(record, tmp / "invariance.json")
    print(f"zflight invariance: wrote {Path(args.out) / 'invariance.png'} and invariance.json")
    return Path(args.out)
