"""``python -m zflight evaluate``: score every attribution method of a classifier against the objects.

Usage::

    python -m zflight evaluate --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/evaluate [--methods deconvnet occlusion random] [--num_images 100] \\
        [--metrics pointing_game relevance_mass] [--steps 32] [--batch_size 50] [--device cpu] \\
        [--sanity [--sanity_images 16]] [--show 4] [--split val] [--overwrite]
    python -m zflight evaluate --model resnet50 --weights DEFAULT --images photos/ \\
        [--masks photo_masks/] --out out/evaluate

The model is named as for every analysis subcommand (:func:`zflight.cli._common.source_arguments`:
a zflight checkpoint, or ``--model`` with ``--weights`` / ``--checkpoint``); it must be a
classifier. The images:

- a zflight checkpoint's own data (``--split``, default the validation split): its first
  ``--num_images`` images (default 100; every prefix of the embedded data set holds the classes
  in equal numbers), scored against the objects' exact masks
  (:meth:`zflight.data.ShapesDataset.mask`);
- ``--images DIR`` (class subfolders or flat): ``--num_images`` of its images spread evenly over
  the folder's order (default: all, at most 100), and with ``--masks MASKS`` their object masks:
  one binary PNG per image at the same relative path (``photos/cat/1.jpg`` ->
  ``MASKS/cat/1.png``; non-zero = object), resized and centre-cropped as the image is (nearest).

Each image is explained for its target class: the true label when the labels index the model's
classes (the embedded data set; class folders named as the model's classes,
:func:`zflight.sources.class_targets`), else the predicted class (printed, and recorded in the
JSON). The maps of each method of :data:`zflight.attribution.methods.METHODS` are scored by the
metrics of :mod:`zflight.analysis.evaluation` (:func:`zflight.analysis.explanations.score_methods`).
Without masks, the localization scores (pointing game, relevance mass and rank) are skipped, in
one printed line, and the ones that need no mask run: deletion / insertion and, with
``--sanity``, the sanity check.

Written into ``--out`` (all at once, or nothing on failure):

- ``scores.json``: the settings, the model's facts, ``scores[method][metric] = {mean, sem, n}``
  (``sem`` the standard error of the mean), the per-image scores, the target used, the model's
  accuracy on the images (when the targets are true labels), whether localization was scored,
  and with ``--sanity`` the model-randomization numbers;
- ``scores.md``: the same table in Markdown (also printed);
- ``evaluation.png``: for the first ``--show`` images, each method's map beside the object mask
  (when there are masks), and the deletion curves (when ``deletion_auc`` is among the metrics);
- with ``--sanity``: ``sanity.png``, the cascading model-randomization curves (Adebayo et al.,
  2018; Spearman and SSIM per layer) of every method on the first ``--sanity_images`` images.

Bad input ends with one ``error:`` line naming the option, exit status 2: an unknown method or
metric (the valid ones listed), ``--num_images`` larger than the images, a number out of range, a
model that is not a classifier, a missing mask file, a localization metric asked for without
masks.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.analysis.explanations import (
    FAITHFULNESS,
    HIGHER_IS_BETTER,
    LOCALIZATION,
    METRICS,
    check_names,
)
from zflight.attribution.methods import METHODS
from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    default_device,
    load_sources,
    output_dir,
    run_cli,
    source_arguments,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]

# Images scored when --num_images is left out (the data set's first ones, or spread over a folder).
_DEFAULT_IMAGES = 100


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
        "Score attribution maps of a classifier against the objects' masks (pointing game, relevance "
        "mass and rank), by deletion and insertion AUC, and optionally the model-randomization sanity check.",
    )
    source_arguments(p)
    p.add_argument("--masks", default=None,
                   help="with --images: a folder of object masks, one binary PNG per image at the same "
                        "relative path (non-zero = object); without masks the localization scores are skipped")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of --ckpt_path's data set the images come from (default: val)")
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"attribution methods (default: all: {' '.join(METHODS)})")
    p.add_argument("--metrics", nargs="+", default=None,
                   help=f"metrics (default: all: {' '.join(METRICS)}; without masks those that need none)")
    p.add_argument("--num_images", type=int, default=None,
                   help=f"images scored: the first N of the split, or N spread over an --images folder "
                        f"(default: {_DEFAULT_IMAGES}, at most all)")
    p.add_argument("--steps", type=int, default=32, help="steps of the deletion / insertion curves")
    p.add_argument("--batch_size", type=int, default=50,
                   help="images explained together (their perturbed copies go through the model 256 at a time)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    p.add_argument("--show", type=int, default=None,
                   help="images drawn in evaluation.png (default: 4, at most the images scored)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the cascading model-randomization check (sanity.png)")
    p.add_argument("--sanity_images", type=int, default=None,
                   help="images of the sanity check: the first N scored (default: 16, at most the images scored)")
    return p


def _check_numbers(args: argparse.Namespace) -> None:
    """Every number checked before the model is read, each error naming its option."""
    for name in ("num_images", "steps", "batch_size", "show", "sanity_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    if args.num_images is not None:
        _check_counts(args, args.num_images)
    if args.masks is not None and args.images is None:
        raise AnalysisError("--masks goes with --images: name the folder of the images the masks belong to "
                            "(the embedded data set has its own exact masks)")


def _check_counts(args: argparse.Namespace, n: int) -> tuple[int, int]:
    """``--show`` and ``--sanity_images`` against the ``n`` images scored; left out: 4 and 16, at most ``n``."""
    show = min(4, n) if args.show is None else args.show
    sanity_images = min(16, n) if args.sanity_images is None else args.sanity_images
    if show > n:
        raise AnalysisError(f"--show: {show} images to draw but only --num_images {n} scored")
    if args.sanity and sanity_images > n:
        raise AnalysisError(f"--sanity_images: {sanity_images} is more than the --num_images {n} scored")
    return show, sanity_images


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.explanations import score_methods
    from zflight.analysis.sanity import model_randomization
    from zflight.figures import save_figure
    from zflight.figures.evaluation import evaluation_figure, sanity_figure
    from zflight.sources import class_targets

    try:
        methods = check_names(args.methods, list(METHODS), "--methods", "method")
        metrics = check_names(args.metrics or list(METRICS), list(METRICS), "--metrics", "metric")
    except ValueError as err:
        raise AnalysisError(str(err)) from None
    _check_numbers(args)
    out = check_out(args.out, args.overwrite)
    device = default_device(args.device)
    source, dataset, _ = load_sources(args, split=args.split)
    if not source.is_classifier:
        raise AnalysisError(f"--model: evaluate needs a classifier; {source.name} outputs "
                            f"{source.num_outputs}-channel feature maps, not class scores")
    indices = _pick(dataset, args.num_images, args.split)
    n = len(indices)
    show, sanity_images = _check_counts(args, n)

    masks, localization = _masks(args, dataset, indices, source.preprocess)
    if masks is None:
        asked = [m for m in metrics if m in LOCALIZATION]
        if args.metrics is not None and asked:
            raise AnalysisError(f"--metrics: {', '.join(asked)} need object masks: give --masks DIR (one binary "
                                "PNG per image), or leave them out")
        metrics = [m for m in metrics if m not in LOCALIZATION]
        print(f"localization scores skipped ({', '.join(LOCALIZATION)}): {localization}", flush=True)
    try:
        model = source.model.to(device)
    except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
        raise AnalysisError(f"--device: cannot use {device}: {err}".splitlines()[0]) from None
    items = [dataset[i] for i in indices]
    images = torch.stack([x for x, _ in items]).to(device)
    labels = torch.tensor([int(y) for _, y in items])
    with torch.no_grad():
        predicted = torch.cat([model(images[s : s + 256]).argmax(1).cpu() for s in range(0, n, 256)])
    mapping, why = class_targets(dataset, source)
    if mapping is not None:
        targets = torch.tensor([mapping[int(y)] for y in labels])
        target_note = "the true label"
        accuracy: float | None = float(predicted.eq(targets).double().mean())
    else:
        targets = predicted
        target_note = "the predicted class"
        accuracy = None
        print(f"target: {why}", flush=True)
    try:
        table = score_methods(model, images, targets, masks, methods, metrics, steps=args.steps,
                              batch_size=args.batch_size, keep_maps=show, progress=True)
        sanity = {}
        if args.sanity:
            k = sanity_images
            for method in methods:
                sanity[method] = model_randomization(model, method, images[:k], targets[:k].to(device))
    except ValueError as err:
        # A method that cannot run on this model (e.g. gradcam without a Conv2d).
        raise AnalysisError(f"--methods: {err}") from None

    names = [_image_name(dataset, i, args.split) for i in indices]
    document: dict[str, Any] = {
        **({"checkpoint": str(Path(args.ckpt_path)), "split": args.split} if args.images is None
           else {"images_folder": str(Path(args.images)), "files": names}),
        "model": source.facts(),
        "num_images": n,
        "images": _images_line(args, n, len(dataset), target_note),
        "target": target_note,
        "target_why": why or None,
        "accuracy": accuracy,
        "localization": localization,
        "localization_skipped": masks is None,
        "methods": methods,
        "metrics": metrics,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in metrics},
        "steps": args.steps,
        "baselines": table.baselines,
        "relevance": "r = sum_c |a_c|; all-zero maps are scored as constant maps (chance)",
        "empty_maps": table.empty,
        "scores": table.summary(),
        "per_image": {m: {k: v.tolist() for k, v in d.items()} for m, d in table.scores.items()},
        "labels": labels.tolist(),
        "targets": targets.tolist(),
    }
    if sanity:
        document["sanity"] = {
            "mode": "cascading",
            "images": sanity_images,
            "layers": list(next(iter(sanity.values())).layers),
            "methods": {
                m: {"spearman": r.spearman.tolist(), "ssim": r.ssim.tolist()} for m, r in sanity.items()
            },
        }
    markdown = _markdown(table.markdown(), document, source.name)

    display = dataset.denormalize(images[:show].cpu())
    classes = source.classes
    titles = [f"{names[i]}: {classes[int(targets[i])] if classes else int(targets[i])}"
              + ("" if mapping is not None else " (pred.)") for i in range(show)]
    deletion = ({m: c["deletion_auc"][:show] for m, c in table.curves.items()}
                if "deletion_auc" in metrics else None)
    with output_dir(out, overwrite=args.overwrite) as tmp:
        fig = evaluation_figure(display, masks[:show] if masks is not None else None, table.maps,
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


def _pick(dataset: Any, num_images: int | None, split: str) -> list[int]:
    """The indices scored: the embedded data set's first N (each prefix is balanced), else N
    spread evenly over the data set's order (a folder is sorted by class: its first N would be
    one class)."""
    total = len(dataset)
    if num_images is not None and num_images > total:
        where = f"the {split} split" if not hasattr(dataset, "files") else "the --images folder"
        raise AnalysisError(f"--num_images: {num_images} is larger than {where} ({total} images)")
    n = num_images if num_images is not None else min(_DEFAULT_IMAGES, total)
    if hasattr(dataset, "mask"):
        return list(range(n))
    return [k * total // n for k in range(n)]


def _image_name(dataset: Any, i: int, split: str) -> str:
    """A file's path in its folder, or ``<split> #i`` for a data set without files."""
    if hasattr(dataset, "name"):
        return str(dataset.name(i))
    return f"{split} #{i}"


def _images_line(args: argparse.Namespace, n: int, total: int, target: str) -> str:
    if args.images is None:
        return f"the first {n} images of the {args.split} split, explained for {target}"
    spread = "all" if n == total else f"{n} spread evenly over the {total}"
    return f"{spread} images of {args.images}, explained for {target}"


def _masks(args: argparse.Namespace, dataset: Any, indices: Sequence[int],
           preprocess: Any) -> tuple[torch.Tensor | None, str]:
    """``([N, H, W]`` bool object masks or ``None``, a line saying where they come from or why none)."""
    if hasattr(dataset, "mask"):
        return torch.stack([dataset.mask(i) for i in indices]), "scored against the data set's exact object masks"
    if args.masks is None:
        return None, "the images have no object masks (give --masks DIR: one binary PNG per image)"
    return (torch.stack([_read_mask(Path(args.masks), dataset, i, preprocess) for i in indices]),
            f"scored against the masks in {args.masks}")


def _read_mask(root: Path, dataset: Any, i: int, preprocess: Any) -> torch.Tensor:
    """Image ``i``'s mask: ``root/<its relative path>.png``, non-zero = object, resized and
    centre-cropped exactly as the image (nearest), as ``[H, W]`` bool."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    name = Path(dataset.name(i))
    path = root / name.with_suffix(".png")
    if not path.is_file():
        raise AnalysisError(f"--masks: no mask for {name}: expected {path}")
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img)
        with Image.open(dataset.files[i]) as photo:
            photo_size = photo.size
    except (OSError, ValueError, SyntaxError) as err:
        raise AnalysisError(f"--masks: cannot read {path} ({type(err).__name__}: {err})") from None
    # Non-zero = object; a colour (or grey + alpha) mask is read on its colour channels.
    on = pixels[..., : 3 if pixels.shape[-1] >= 3 else 1].any(-1) if pixels.ndim == 3 else pixels != 0
    mask = Image.fromarray(on.astype(np.uint8) * 255)
    if mask.size != photo_size:
        raise AnalysisError(f"--masks: {path} is {mask.size[0]}x{mask.size[1]} but its image {name} is "
                            f"{photo_size[0]}x{photo_size[1]}")
    nearest = T.InterpolationMode.NEAREST
    shaped = T.CenterCrop(preprocess.crop)(T.Resize(preprocess.resize, interpolation=nearest)(mask))
    result = torch.from_numpy(np.asarray(shaped) > 0)
    if not bool(result.any()):
        raise AnalysisError(f"--masks: {path} has no object pixel inside the {preprocess.crop}x{preprocess.crop} "
                            "centre crop the model sees")
    return result


def _markdown(table: str, document: dict[str, Any], model: str) -> str:
    """The table with a line saying what was scored, and the faithfulness baselines."""
    where = (f"{document['split']} images of {document['checkpoint']}" if "checkpoint" in document
             else f"images of {document['images_folder']} by {model}")
    accuracy = ("" if document["accuracy"] is None
                else f"model accuracy on them {document['accuracy']:.1%}; ")
    lines = [
        (f"Scores of {document['num_images']} {where} ({accuracy}target: {document['target']}; "
         "mean ± standard error; ↑ higher is better, ↓ lower)."),
        "",
        table,
    ]
    if document["target_why"]:
        lines += ["", f"Target: {document['target_why']}."]
    if document["localization_skipped"]:
        lines += ["", f"Localization scores skipped: {document['localization']}."]
    faith = [m for m in document["metrics"] if m in FAITHFULNESS]
    if faith:
        lines += ["", f"Deletion / insertion: {document['steps']} steps; baselines "
                      + ", ".join(f"{m}: {document['baselines'][m]}" for m in faith) + "."]
    empty = {m: k for m, k in document["empty_maps"].items() if k}
    if empty:
        lines += ["", "All-zero maps, scored as constant maps (chance): "
                      + ", ".join(f"{m} {k}" for m, k in empty.items()) + "."]
    return "\n".join(lines)
