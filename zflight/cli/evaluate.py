"""``python -m zflight evaluate``: score every attribution method of a checkpoint against the objects.

Usage::

    python -m zflight evaluate --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/evaluate [--methods deconvnet occlusion random] [--num_images 100] \\
        [--metrics pointing_game relevance_mass] [--steps 32] [--batch_size 50] [--device cpu] \\
        [--sanity [--sanity_images 16]] [--show 4] [--split val] [--overwrite]

The first ``--num_images`` images of the checkpoint's embedded data set (``--split``, default the
validation split; every prefix of it holds the classes in equal numbers) are explained for their
true label by each method of :data:`zflight.attribution.methods.METHODS`, and each map is scored
against the object's exact mask (:meth:`zflight.data.ShapesDataset.mask`) by the metrics of
:mod:`zflight.analysis.evaluation` (:func:`zflight.analysis.explanations.score_methods`).

Written into ``--out`` (all at once, or nothing on failure):

- ``scores.json``: the settings, ``scores[method][metric] = {mean, sem, n}`` (``sem`` the standard
  error of the mean), the per-image scores, the model's accuracy on the images, and with
  ``--sanity`` the model-randomization numbers;
- ``scores.md``: the same table in Markdown (also printed);
- ``evaluation.png``: for the first ``--show`` images, each method's map beside the object mask,
  and the deletion curves (when ``deletion_auc`` is among the metrics);
- with ``--sanity``: ``sanity.png``, the cascading model-randomization curves (Adebayo et al.,
  2018; Spearman and SSIM per layer) of every method on the first ``--sanity_images`` images.

Bad input ends with one ``error:`` line naming the option, exit status 2: an unknown method or
metric (the valid ones listed), ``--num_images`` larger than the split, a number out of range, a
checkpoint not trained on the embedded data set.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.analysis.explanations import FAITHFULNESS, HIGHER_IS_BETTER, METRICS, check_names
from zflight.attribution.methods import METHODS
from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    common_arguments,
    embedded_dataset,
    load_network,
    output_dir,
    run_cli,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``python -m zflight evaluate``.

    Args:
        argv: the arguments after ``evaluate`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The JSON document written as ``<out>/scores.json``.

    Raises:
        SystemExit: status 2 and one ``error:`` line on bad input (nothing written to ``--out``).

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "ev", "--num_images", "50"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


# ----------------------------------------------------------------------------------- internals
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "evaluate",
        "Score attribution maps against the objects' masks (pointing game, relevance mass and "
        "rank, deletion and insertion AUC), and optionally the model-randomization sanity check.",
    )
    common_arguments(p, indices=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"attribution methods (default: all: {' '.join(METHODS)})")
    p.add_argument("--metrics", nargs="+", default=list(METRICS),
                   help=f"metrics (default: all: {' '.join(METRICS)})")
    p.add_argument("--num_images", type=int, default=100,
                   help="score the first N images of the split (default: 100)")
    p.add_argument("--steps", type=int, default=32, help="steps of the deletion / insertion curves")
    p.add_argument("--batch_size", type=int, default=50,
                   help="images explained together (their perturbed copies go through the model 256 at a time)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--show", type=int, default=None,
                   help="images drawn in evaluation.png (default: 4, at most --num_images)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the cascading model-randomization check (sanity.png)")
    p.add_argument("--sanity_images", type=int, default=None,
                   help="images of the sanity check: the first N scored (default: 16, at most --num_images)")
    return p


def _check_numbers(args: argparse.Namespace) -> None:
    """Every number checked before the checkpoint is read, each error naming its option.

    ``--show`` and ``--sanity_images`` left out default to 4 and 16, or ``--num_images`` if fewer.
    """
    for name in ("num_images", "steps", "batch_size", "show", "sanity_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    if args.show is None:
        args.show = min(4, args.num_images)
    if args.sanity_images is None:
        args.sanity_images = min(16, args.num_images)
    if args.show > args.num_images:
        raise AnalysisError(f"--show: {args.show} images to draw but only --num_images {args.num_images} scored")
    if args.sanity and args.sanity_images > args.num_images:
        raise AnalysisError(
            f"--sanity_images: {args.sanity_images} is more than the --num_images {args.num_images} scored"
        )


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.explanations import score_methods
    from zflight.analysis.sanity import model_randomization
    from zflight.figures import save_figure
    from zflight.figures.evaluation import evaluation_figure, sanity_figure

    try:
        methods = check_names(args.methods, list(METHODS), "--methods", "method")
        metrics = check_names(args.metrics, list(METRICS), "--metrics", "metric")
    except ValueError as err:
        raise AnalysisError(str(err)) from None
    _check_numbers(args)
    out = check_out(args.out, args.overwrite)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise AnalysisError(f"--device: {err}") from None
    model, hparams, data_hp = load_network(args.ckpt_path)
    try:
        dataset = embedded_dataset(hparams, data_hp, args.split)
    except AnalysisError as err:
        raise AnalysisError(f"--ckpt_path: {err}") from None
    if not hasattr(dataset, "mask"):
        raise AnalysisError(f"--ckpt_path: its data set ({type(dataset).__name__}) has no object masks")
    n = args.num_images
    if n > len(dataset):
        raise AnalysisError(f"--num_images: {n} is larger than the {args.split} split ({len(dataset)} images)")

    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
        raise AnalysisError(f"--device: cannot use {args.device}: {err}".splitlines()[0]) from None
    items = [dataset[i] for i in range(n)]
    images = torch.stack([x for x, _ in items]).to(device)
    labels = torch.tensor([int(y) for _, y in items])
    masks = torch.stack([dataset.mask(i) for i in range(n)])
    with torch.no_grad():
        accuracy = float(torch.cat([model(images[s : s + 256]).argmax(1).cpu()
                                    for s in range(0, n, 256)]).eq(labels).double().mean())
    try:
        table = score_methods(model, images, labels, masks, methods, metrics, steps=args.steps,
                              batch_size=args.batch_size, keep_maps=args.show, progress=True)
        sanity = {}
        if args.sanity:
            k = args.sanity_images
            for method in methods:
                sanity[method] = model_randomization(model, method, images[:k], labels[:k].to(device))
    except ValueError as err:
        # A method that cannot run on this model (e.g. gradcam without a Conv2d).
        raise AnalysisError(f"--methods: {err}") from None

    summary = table.summary()
    classes = list(getattr(dataset, "classes", []))
    document: dict[str, Any] = {
        "checkpoint": str(Path(args.ckpt_path)),
        "split": args.split,
        "num_images": n,
        "images": f"the first {n} images of the {args.split} split, explained for their true label",
        "accuracy": accuracy,
        "methods": methods,
        "metrics": metrics,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in metrics},
        "steps": args.steps,
        "baselines": table.baselines,
        "relevance": "r = sum_c |a_c|; all-zero maps are scored as constant maps (chance)",
        "empty_maps": table.empty,
        "scores": summary,
        "per_image": {m: {k: v.tolist() for k, v in d.items()} for m, d in table.scores.items()},
        "labels": labels.tolist(),
    }
    if sanity:
        document["sanity"] = {
            "mode": "cascading",
            "images": args.sanity_images,
            "layers": list(next(iter(sanity.values())).layers),
            "methods": {
                m: {"spearman": r.spearman.tolist(), "ssim": r.ssim.tolist()} for m, r in sanity.items()
            },
        }
    markdown = _markdown(table.markdown(), document)

    show = args.show
    display = dataset.denormalize(images[:show].cpu())
    titles = [f"{args.split} #{i}: {classes[int(labels[i])] if classes else int(labels[i])}"
              for i in range(show)]
    deletion = ({m: c["deletion_auc"][:show] for m, c in table.curves.items()}
                if "deletion_auc" in metrics else None)
    with output_dir(out, overwrite=args.overwrite) as tmp:
        fig = evaluation_figure(display, masks[:show], table.maps,
                                table.fractions if deletion is not None else None, deletion, titles=titles)
        save_figure(fig, tmp / "evaluation.png")
        if sanity:
            save_figure(sanity_figure(sanity), tmp / "sanity.png")
        write_json(document, tmp / "scores.json")
        (tmp / "scores.md").write_text(markdown + "\n")
    print(markdown)
    written = "scores.json, scores.md, evaluation.png" + (", sanity.png" if sanity else "")
    print(f"wrote {written} to {out}")
    return document


def _markdown(table: str, document: dict[str, Any]) -> str:
    """The table with a line saying what was scored, and the faithfulness baselines."""
    lines = [
        f"Scores of {document['num_images']} {document['split']} images of {document['checkpoint']} "
        f"(model accuracy on them {document['accuracy']:.1%}; target: the true label; mean ± standard "
        f"error; ↑ higher is better, ↓ lower).",
        "",
        table,
    ]
    faith = [m for m in document["metrics"] if m in FAITHFULNESS]
    if faith:
        lines += ["", f"Deletion / insertion: {document['steps']} steps; baselines "
                      + ", ".join(f"{m}: {document['baselines'][m]}" for m in faith) + "."]
    empty = {m: k for m, k in document["empty_maps"].items() if k}
    if empty:
        lines += ["", "All-zero maps, scored as constant maps (chance): "
                      + ", ".join(f"{m} {k}" for m, k in empty.items()) + "."]
    return "\n".join(lines)
