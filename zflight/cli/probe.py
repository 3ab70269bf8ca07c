"""``python -m zflight probe``: linear probes layer by layer (the paper's Table 7), trained vs random weights.

Usage::

    python -m zflight probe --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --transfer_shapes --random_baseline --out out/probe
    python -m zflight probe --model alexnet --weights DEFAULT --images /data/caltech101 \\
        --train_per_class 30 --splits 5 --drop_class BACKGROUND_Google --out out/caltech101

The model is ``--ckpt_path`` or ``--model`` (with ``--weights``, ``--checkpoint``,
``--model_args``: see ``python -m zflight layers``). The images are ``--images DIR`` (an
ImageFolder layout: one subfolder per class), optionally with ``--test_images DIR`` (the same
class subfolders); or ``--transfer_shapes``, the embedded transfer task
(:class:`~zflight.data.transfer.TransferShapesDataset`: ten shape classes the quickstart never
saw, ``--pool_per_class`` images of each, normalized as the shapes data set is).

Without ``--test_images``, each of ``--splits`` random splits draws ``--train_per_class`` training
images per class (default 30, Caltech-101's protocol) and tests on the rest of each class, at
most ``--test_per_class``. :func:`zflight.analysis.probe.linear_probe` does the work: features of
all ``--layers`` from one forward pass per batch, pooled (``--pooling``), standardized; an
L2-regularized linear SVM (``--classifier svm``, the default) or softmax (``logistic``), ``C``
by cross-validation on the training images unless ``--C`` is given. ``--random_baseline`` also
probes the same network with fresh random weights (the paper's untrained baseline).

Written into ``--out`` (all at once, or nothing on failure):

- ``probe.json``: the model and images, the settings, and per model and layer the per-split
  train/test accuracy, mean per-class accuracy, C and confusion matrix, with mean ± std;
- ``probe.md``: the Table-7-shaped table (also printed);
- ``probe.png``: mean per-class accuracy against layer, the models overlaid.

Bad input ends with one ``error:`` line naming the option, exit status 2, and nothing in
``--out``: an unknown layer (with close names), ``--train_per_class`` larger than a class holds,
``--test_images`` whose classes differ from ``--images``', a single class, a flat folder.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    layers_or_default,
    load_sources,
    output_dir,
    run_cli,
    source_arguments,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]

#: Table 7's layers 1-7, in zflight's network's names (used when the model has them all): the
#: rectified outputs. A conv's own output is linear in the image, and so is its average over a
#: grid cell: pooled, it tells a linear probe no more than the pixels' mean colours do.
TABLE7_LAYERS = ["relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``python -m zflight probe``.

    Args:
        argv: the arguments after ``probe`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The JSON document written as ``<out>/probe.json``.

    Raises:
        SystemExit: status 2 and one ``error:`` line on bad input (nothing written to ``--out``).

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--transfer_shapes", "--out", "probe"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


# ----------------------------------------------------------------------------------- internals
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "probe",
        "Linear probes (the paper's Table 7): a linear classifier on each layer's features, "
        "trained on a few images per class, and its accuracy on held-out images, layer by layer.",
    )
    source_arguments(p, images="folder")
    p.add_argument("--test_images", default=None,
                   help="a folder of test images with the same class subfolders as --images "
                        "(default: each split tests on the images of --images not drawn for training)")
    p.add_argument("--transfer_shapes", action="store_true",
                   help="the embedded transfer task instead of --images: ten new shape classes drawn "
                        "by the shapes generator")
    p.add_argument("--pool_per_class", type=int, default=80,
                   help="--transfer_shapes: images generated per class (default 80)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to probe (default: relu1 … relu7, Table 7's layers 1-7, when the model has "
                        "them, else each resolution stage's output)")
    p.add_argument("--classifier", default="svm", choices=["svm", "logistic"],
                   help="svm: one-vs-rest squared-hinge linear SVM (as LinearSVC); logistic: softmax "
                        "(default: svm, the paper's)")
    p.add_argument("--C", type=float, default=None,
                   help="inverse regularization strength (default: chosen by 3-fold cross-validation)")
    p.add_argument("--pooling", default="grid", choices=["grid", "avg", "max", "flatten"],
                   help="how conv maps become features (default: grid, a 2x2 average)")
    p.add_argument("--grid", type=int, default=2, help="side of the grid pooling (default 2)")
    p.add_argument("--train_per_class", type=int, default=None,
                   help="training images per class per split (default: 30 without --test_images, "
                        "all with it)")
    p.add_argument("--test_per_class", type=int, default=None,
                   help="at most this many test images per class (default: all)")
    p.add_argument("--splits", type=int, default=1, help="random splits, reported as mean ± std (default 1)")
    p.add_argument("--drop_class", nargs="+", default=[],
                   help="classes to leave out (Caltech-101: BACKGROUND_Google)")
    p.add_argument("--random_baseline", action="store_true",
                   help="also probe the same network with fresh random weights")
    p.add_argument("--seed", type=int, default=0, help="seeds the splits, the folds and the random weights")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.probe import linear_probe
    from zflight.figures import save_figure
    from zflight.figures.probe import probe_figure, probe_table

    for name in ("pool_per_class", "grid", "train_per_class", "test_per_class", "splits", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    if args.C is not None and not args.C > 0:
        raise AnalysisError(f"--C must be > 0, got {args.C}")
    if args.transfer_shapes and (args.images or args.test_images):
        raise AnalysisError("--transfer_shapes: give it or --images, not both")
    if not args.transfer_shapes and not args.images:
        raise AnalysisError("--images: name a folder of class subfolders (or use --transfer_shapes)")
    if args.test_images and args.splits > 1 and args.train_per_class is None:
        raise AnalysisError("--splits: with --test_images, random splits need --train_per_class")
    out = check_out(args.out, args.overwrite)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise AnalysisError(f"--device: {err}") from None

    source, train, line = _images(args)
    test = _test_images(args, source, train)
    layers = _layers(args, source)
    per_class = args.train_per_class if (args.train_per_class or args.test_images) else 30
    model = source.model.to(device)
    models = {"trained": model}
    if args.random_baseline:
        models["random weights"] = _random_weights(model, source, args.seed)
    results = {}
    for label, net in models.items():
        print(f"probing {label}: {' '.join(layers)}", flush=True)
        started = time.perf_counter()
        results[label] = linear_probe(
            net, train, layers, test=test, classifier=args.classifier, C=args.C, pooling=args.pooling,
            grid=args.grid, train_per_class=per_class, test_per_class=args.test_per_class, splits=args.splits,
            drop_class=args.drop_class, seed=args.seed, batch_size=args.batch_size, device=device,
        )
        print(f"  {time.perf_counter() - started:.1f} s", flush=True)
    table = probe_table(results)
    doc = {
        "source": source.facts(),
        "images": line,
        "test_images": args.test_images,
        "layers": layers,
        "models": {label: r.to_dict() for label, r in results.items()},
    }
    header = f"# Linear probes\n\n{line}; {_settings(next(iter(results.values())))}.\n\n"
    with output_dir(out, overwrite=args.overwrite) as tmp:
        write_json(doc, tmp / "probe.json")
        (tmp / "probe.md").write_text(header + table)
        save_figure(probe_figure(results), tmp / "probe.png")
    print(table, end="")
    print(f"wrote {out}/probe.json, probe.md, probe.png", flush=True)
    return doc


def _images(args: argparse.Namespace) -> tuple[Any, Any, str]:
    if not args.transfer_shapes:
        source, train, line = load_sources(args)
        if not getattr(train, "classes", None):
            raise AnalysisError(f"--images: {args.images} has no class subfolders; a probe needs labelled images")
        return source, train, line
    from zflight.data.transfer import TransferShapesDataset

    source, _, _ = load_sources(args, images=False)
    n = 10 * args.pool_per_class
    train = TransferShapesDataset(n, image_size=source.image_size)
    line = (f"the embedded transfer task: {n} images of {len(train.classes)} new shape classes "
            f"({args.pool_per_class} per class, {source.image_size} px)")
    return source, train, line


def _test_images(args: argparse.Namespace, source: Any, train: Any) -> Any:
    if not args.test_images:
        return None
    from zflight.sources import image_folder

    try:
        test = image_folder(args.test_images, source.preprocess, flag="test_images")
    except (ValueError, FileNotFoundError) as err:
        raise AnalysisError(f"--{err}" if str(err).startswith("test_images") else f"--test_images: {err}") from None
    if not test.classes:
        raise AnalysisError(f"--test_images: {args.test_images} has no class subfolders")
    if list(test.classes) != list(train.classes):
        only_train = [c for c in train.classes if c not in test.classes]
        only_test = [c for c in test.classes if c not in train.classes]
        raise AnalysisError(f"--test_images: its classes differ from --images' (only in --images: "
                            f"{', '.join(only_train[:5]) or 'none'}; only in --test_images: "
                            f"{', '.join(only_test[:5]) or 'none'})")
    return test


def _layers(args: argparse.Namespace, source: Any) -> list[str]:
    if args.layers:
        return layers_or_default(args.layers, source)
    from zflight.attribution import resolve_layer

    try:
        for name in TABLE7_LAYERS:
            resolve_layer(source.model, name)
    except ValueError:
        return layers_or_default(None, source)
    return list(TABLE7_LAYERS)


def _random_weights(model: nn.Module, source: Any, seed: int) -> nn.Module:
    """The same network with fresh weights: zflight's own init for its networks, else each module's."""
    from zflight.models import init_weights

    fresh = copy.deepcopy(model)
    # A stream of its own (the global one is left as it was), away from the seeds fit uses.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if source.kind == "zflight" and source.hparams.get("arch", "zfnet") in ("zfnet", "zfnet_b", "alexnet_zf"):
            init_weights(fresh, source.hparams.get("init", "paper"))
    return fresh.eval()


def _settings(result: Any) -> str:
    pool = f"{result.grid}x{result.grid} grid" if result.pooling == "grid" else result.pooling
    per = (f"{result.train_per_class} training images per class" if result.train_per_class
           else f"{result.num_train[0]} training images")
    splits = f", mean ± std over {result.splits} splits" if result.splits > 1 else ""
    return (f"{result.classifier} on standardized features ({pool} pooling), {per}, "
            f"{result.num_test[0]} test images{splits}; {len(result.classes)} classes")
