"""``python -m zflight invariance``: the paper's Fig. 5 for any classifier, as PNG + JSON.

:func:`main` is the subcommand; the figure is :func:`zflight.figures.invariance.invariance_figure`
(also drawn by the :class:`~zflight.callbacks.InvarianceFigures` callback).

Usage::

    python -m zflight invariance --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/invariance [--indices 0 1 2 3 4 | --images a.png b.png --labels ring 3]
    python -m zflight invariance --model resnet50 --weights DEFAULT --images photos/ --out out/inv

writes ``out/invariance/invariance.png`` (one row per transformation: examples, one column per
layer, the probability of each image's class) and ``out/invariance/invariance.json`` (the curves).

The model is named as for every analysis subcommand
(:func:`zflight.cli._common.source_arguments`); it must be a classifier. The images:

- a zflight checkpoint's own data, by index (``--indices``, with their true labels);
- ``--images``: image files or a folder, read through the model's preprocessing. Their class:
  ``--labels`` (a class name or number per image), else the class folders' labels when they
  name the model's classes (:func:`zflight.sources.class_targets`), else the class the model
  predicts for the untransformed image (printed, and recorded in the JSON).

The layers compared (``--layers`` names others): zflight's networks ``norm1`` and ``relu7``, the
paper's layers 1 and 7; any other model the first and the last of its default layers
(:func:`zflight.sources.default_layers`: each resolution stage's output; ResNet ``relu`` and
``layer4``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.analysis.invariance import (
    TRANSFORMS,
    default_amounts,
    invariance_curves,
)
from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    class_indices,
    default_device,
    embedded_dataset,
    paper_or_stage_layers,
    load_network,
    load_sources,
    output_dir,
    pick_images,
    run_cli,
    source_arguments,
    subcommand_parser,
    write_json,
)
from zflight.figures import figure_to_tensor, save_figure
from zflight.figures.invariance import example_strip, invariance_figure

__all__ = ["invariance_figure", "main", "load_classifier", "embedded_dataset", "output_dir",
           "save_figure", "figure_to_tensor", "write_json", "AnalysisError"]


# The shared plumbing lives in zflight.cli._common; its names stay importable from here.
load_classifier = load_network

# The paper's layers 1 and 7 in zflight's networks.
_PAPER_LAYERS = ["norm1", "relu7"]
_DEFAULT_INDICES = [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------- the command
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "invariance",
        "Invariance of features and output to translation, scale and rotation (Fig. 5).",
    )
    source_arguments(p, images="files")
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of --ckpt_path's data set the images come from (default: val)")
    p.add_argument("--indices", type=int, nargs="+", default=None,
                   help="image indices in the split (default: 0 1 2 3 4; not with --images)")
    p.add_argument("--labels", nargs="+",
                   help="the class (name or number) of each --images file (default: the class folders' "
                        "labels when they name the model's classes, else the predicted class)")
    p.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers whose features are compared (default: norm1 relu7, the paper's 1 and 7, "
                        "in zflight's networks; else the first and last default layers)")
    for t in TRANSFORMS:
        p.add_argument(f"--{t}_amounts", type=float, nargs="+", default=None,
                       help=f"amounts of {t} (default: zflight.analysis.invariance.default_amounts)")
    p.add_argument("--fill", type=float, default=0.0, help="value of uncovered pixels (0: data mean)")
    p.add_argument("--raw", action="store_true", help="plot raw distances instead of relative ones")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
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
    if args.images is not None and args.indices is not None:
        raise AnalysisError("argument --indices: not allowed with argument --images (--indices picks images "
                            "of the checkpoint's data set)")
    if args.labels is not None and args.images is None:
        raise AnalysisError("--labels goes with --images (data set images use their true labels)")
    check_out(args.out, args.overwrite)
    device = default_device(args.device)
    source, dataset, _ = load_sources(args, split=args.split)
    if not source.is_classifier:
        raise AnalysisError(f"--model: invariance needs a classifier (it plots the probability of each image's "
                            f"class); {source.name} outputs {source.num_outputs}-channel feature maps")
    layers = _layers(args.layers, source)
    model = source.model.to(device)
    class_names = source.classes
    if args.images is not None:
        images, labels, record, titles = _from_files(args, dataset, source, model, device)
    else:
        indices = args.indices if args.indices is not None else _DEFAULT_INDICES
        images, labels = pick_images(dataset, indices)
        record = {"split": args.split, "indices": list(indices)}
        titles = None
    images = images.to(device)
    all_curves, examples = [], {}
    for t in args.transforms:
        amounts = getattr(args, f"{t}_amounts") or default_amounts(t, images.shape[-2])
        try:
            curves = invariance_curves(model, images, labels, transform=t, amounts=amounts,
                                       layers=layers, fill=args.fill, batch_size=args.batch_size)
        except ValueError as err:
            if args.labels is not None and str(err).startswith("labels"):
                raise AnalysisError(f"--{err}") from None  # e.g. a class number out of range
            raise
        all_curves.append(curves)
        examples[t] = dataset.denormalize(example_strip(images[0].cpu(), t, amounts, fill=args.fill))
    fig = invariance_figure(all_curves, examples=examples, class_names=class_names,
                            relative=not args.raw, titles=titles)
    record = {
        "ckpt_path": str(args.ckpt_path) if args.ckpt_path is not None else None,
        "model": source.facts(),
        **record,
        "layers": layers,
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


def _layers(given: Sequence[str] | None, source: Any) -> list[str]:
    """``--layers`` (checked), else the paper's layers 1 and 7 in zflight's networks, else the
    first and last of the model's default layers (printed)."""
    return paper_or_stage_layers(given, source, paper=_PAPER_LAYERS, paper_why="the paper's layers 1 and 7",
                                 pick=lambda stages: [stages[0], stages[-1]] if len(stages) > 1 else stages,
                                 pick_why="the first and last default layers (each resolution stage's output)")


def _from_files(args: argparse.Namespace, dataset: Any, source: Any, model: torch.nn.Module,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], list[str]]:
    """``--images``: every image, its class (``--labels``, the folder's or the predicted one),
    the record of where they came from, and a title per image."""
    from zflight.sources import class_targets

    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([x for x, _ in items])
    names = [dataset.name(i) for i in range(len(dataset))]
    if args.labels is not None:
        labels = torch.tensor(class_indices(args.labels, len(dataset), source.classes, "--labels"))
        labels_from = "--labels"
    else:
        mapping, why = class_targets(dataset, source)
        if mapping is not None:
            labels = torch.tensor([mapping[int(y)] for _, y in items])
            labels_from = "the class folders"
        else:
            with torch.no_grad():
                labels = torch.cat([model(images[s : s + args.batch_size].to(device)).argmax(1).cpu()
                                    for s in range(0, len(images), args.batch_size)])
            labels_from = f"the predicted class ({why})"
            print(f"labels: {why}", flush=True)
    record = {"images": [str(f) for f in dataset.files], "labels_from": labels_from}
    titles = [f"{name}: {_class_name(source.classes, int(k))}" for name, k in zip(names, labels)]
    return images, labels, record, titles


def _class_name(class_names: Sequence[str] | None, k: int) -> str:
    return str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else f"class {k}"
