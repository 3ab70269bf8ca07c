"""``python -m zflight invariance``: the paper's Fig. 5 from a checkpoint, as PNG + JSON.

:func:`main` is the subcommand; the figure is :func:`zflight.figures.invariance.invariance_figure`
(also drawn by the :class:`~zflight.callbacks.InvarianceFigures` callback).

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
    default_amounts,
    invariance_curves,
)
from zflight.figures import figure_to_tensor, save_figure
from zflight.figures.invariance import example_strip, invariance_figure

__all__ = ["invariance_figure", "main", "load_classifier", "embedded_dataset", "output_dir",
           "save_figure", "figure_to_tensor", "write_json", "AnalysisError"]


# The shared plumbing lives in zflight.cli._common; its names stay importable from here.
load_classifier = load_network


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
