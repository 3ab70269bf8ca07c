"""``python -m zflight dissect``: name what each unit detects (Network Dissection, Bau et al. 2017).

Usage::

    python -m zflight dissect --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/dissect [--layers conv1 conv2 conv3 conv4 conv5] [--num_images N] \\
        [--split val] [--concepts PATH] [--quantile 0.005] [--iou_threshold 0.04] \\
        [--units 8] [--examples 4] [--batch_size 64] [--device cpu] [--overwrite]

Every unit of ``--layers`` is scored against the pixel-labelled concepts of the first
``--num_images`` images (default: all) of the checkpoint's embedded data set (``--split``;
objects, colours, parts, distractors, background: :meth:`zflight.data.ShapesDataset.concept_masks`),
or of a :class:`~zflight.data.ConceptFolder` (``--concepts PATH``: ``PATH/images/<name>.png``
and ``PATH/masks/<concept>/<name>.png``, resized to the model's image size and normalized as
the checkpoint's data module normalizes). :func:`zflight.analysis.dissection.dissect` does the
scoring; the rule is Bau et al.'s exactly.

Written into ``--out`` (all at once, or nothing on failure):

- ``dissection.json``: :meth:`Dissection.to_json` (every unit's IoU with every concept, its
  threshold, label and whether it is a detector), plus ``summary`` (detectors and unique
  concepts per layer and per concept family) and ``source`` (checkpoint, images, settings).
  ``python -m zflight visualize --dissection`` and ``report --dissection`` read it;
- ``dissection.md``: per layer, the detectors and unique concepts (per family), and the
  ``--units`` units of largest IoU with their label and IoU (also printed);
- ``dissect_<layer>.png``: Bau et al.'s Fig. 2 for those units: each unit's ``--examples``
  most activating images, with its mask ``M_k`` (the upsampled map above the unit's
  threshold) outlined and the rest dimmed, captioned ``conv5 unit 12 · object/ring 0.21``.

Bad input ends with one ``error:`` line naming the option, exit status 2, and nothing in
``--out``: an unknown layer (with the close names), ``--quantile`` outside (0, 1), a data set
without concept masks, masks of another size than their image, an empty data set,
``--num_images`` larger than the data set.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    common_arguments,
    data_mean_std,
    embedded_dataset,
    read_ckpt,
    output_dir,
    rebuild_data,
    run_cli,
    safe_name,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``python -m zflight dissect``.

    Args:
        argv: the arguments after ``dissect`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The JSON document written as ``<out>/dissection.json``.

    Raises:
        SystemExit: status 2 and one ``error:`` line on bad input (nothing written to ``--out``).

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "dis", "--num_images", "500"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


# ----------------------------------------------------------------------------------- internals
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "dissect",
        "Network Dissection: label every unit of the chosen layers with the concept (object, "
        "colour, part, ...) its thresholded activation overlaps best, and draw the best units.",
    )
    common_arguments(p, indices=None)
    p.add_argument("--layers", nargs="+", default=list(LAYERS),
                   help="layers to dissect (default: conv1 … conv5)")
    p.add_argument("--num_images", type=int, default=None,
                   help="dissect the first N images (default: all of the split or folder)")
    p.add_argument("--concepts", default=None,
                   help="a ConceptFolder (PATH/images/<name>.png, PATH/masks/<concept>/<name>.png) "
                        "instead of the embedded data set")
    p.add_argument("--quantile", type=float, default=0.005,
                   help="top fraction of each unit's activations inside its mask, in (0, 1) (default 0.005)")
    p.add_argument("--iou_threshold", type=float, default=0.04,
                   help="a unit whose best IoU exceeds this is a detector, in [0, 1] (default 0.04)")
    p.add_argument("--units", type=int, default=8,
                   help="units of largest IoU listed per layer and drawn (default 8)")
    p.add_argument("--examples", type=int, default=4, help="images per drawn unit (default 4)")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.dissection import ConceptSubset, dissect, unit_examples
    from zflight.figures import save_png
    from zflight.figures.dissection import dissection_panel

    for name in ("num_images", "units", "examples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    # Checked here too (dissect checks them after the checkpoint is read and the data is built).
    if not 0.0 < args.quantile < 1.0:
        raise AnalysisError(f"--quantile must be in (0, 1), both ends excluded, got {args.quantile}")
    if not 0.0 <= args.iou_threshold <= 1.0:
        raise AnalysisError(f"--iou_threshold must be in [0, 1], got {args.iou_threshold}")
    out = check_out(args.out, args.overwrite)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise AnalysisError(f"--device: {err}") from None
    module, dm_hp = read_ckpt(args.ckpt_path)
    model = module.model.eval()
    hparams = dict(module.hparams)
    dataset, source = _dataset(args, hparams, dm_hp)
    flag = "--concepts" if args.concepts else "--split"
    n = len(dataset) if args.num_images is None else args.num_images
    if len(dataset) == 0:
        raise AnalysisError(f"{flag}: the data set is empty: there are no images to dissect")
    if n > len(dataset):
        raise AnalysisError(f"--num_images: {n} is larger than the data set ({len(dataset)} images, {source})")
    if n < len(dataset):
        dataset = ConceptSubset(dataset, range(n))
    try:
        # Item 0 before the progress bar starts: a folder of mis-sized or unreadable masks fails
        # here, at once (dissect checks every item as it reads it).
        _check_first(dataset)
    except (ValueError, OSError) as err:
        raise AnalysisError(f"{flag}: {err}") from None
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
        raise AnalysisError(f"--device: cannot use {args.device}: {err}".splitlines()[0]) from None

    try:
        result = dissect(model, dataset, args.layers, quantile=args.quantile,
                         iou_threshold=args.iou_threshold, batch_size=args.batch_size, progress=True)
    except (ValueError, OSError) as err:  # OSError: UnreadableImageError names the file
        message = str(err)
        # The data set's errors (a mask of another size, an unreadable file, a missing
        # concept_masks) are about what --concepts or --split named.
        if message.startswith(("dataset", "mask", "cannot read", "images")) or isinstance(err, OSError):
            raise AnalysisError(f"{flag}: {message}") from None
        raise
    units = {key: [u["unit"] for u in result.top_units(key, args.units)] for key in result.layers}
    examples = unit_examples(model, dataset, result, units, k=args.examples, batch_size=args.batch_size)

    summary = result.summary()
    document: dict[str, Any] = {
        **result.to_json(),
        "summary": summary,
        "top_units": {key: result.top_units(key, args.units) for key in result.layers},
        "source": {"checkpoint": str(Path(args.ckpt_path)), "images": source, "num_images": n},
    }
    markdown = _markdown(result, document)
    with output_dir(out, overwrite=args.overwrite) as tmp:
        for key, ex in examples.items():
            s = summary[key]
            title = (f"{key}: {s['detectors']} of {s['units']} units detect a concept (IoU > "
                     f"{result.iou_threshold:g}), {s['unique_concepts']} unique; top {len(ex.units)} by IoU")
            save_png(dissection_panel(ex, title=title), tmp / f"dissect_{safe_name(key)}.png")
        write_json(document, tmp / "dissection.json")
        (tmp / "dissection.md").write_text(markdown + "\n")
    print(markdown)
    print(f"wrote dissection.json, dissection.md and {len(examples)} PNG(s) to {out}")
    return document


def _dataset(args: argparse.Namespace, hparams: dict[str, Any], dm_hp: dict[str, Any]) -> tuple[Any, str]:
    """The images with concept masks, and a line saying where they come from."""
    image_size = int(hparams.get("image_size", 64))
    if args.concepts is not None:
        from zflight.data import ConceptFolder

        mean, std = data_mean_std(rebuild_data(dm_hp, image_size))
        try:
            folder = ConceptFolder(args.concepts, image_size=image_size, mean=mean, std=std)
        except (FileNotFoundError, ValueError) as err:
            raise AnalysisError(f"--concepts: {err}") from None
        return folder, f"ConceptFolder {args.concepts}"
    data_hp = {k: v for k, v in dm_hp.items() if not k.startswith("_")}
    try:
        dataset = embedded_dataset(hparams, data_hp, args.split)
    except AnalysisError as err:
        raise AnalysisError(f"--ckpt_path: {err}; pass --concepts PATH (a folder of images with "
                            "concept masks) to dissect it") from None
    if not callable(getattr(dataset, "concept_masks", None)):
        raise AnalysisError(f"--split: its data set ({type(dataset).__name__}) has no concept masks; "
                            "pass --concepts PATH")
    return dataset, f"{args.split} split of the embedded shapes data set"


def _check_first(dataset: Any) -> None:
    """Raise what dissect would on item 0: a mask whose size differs from its image."""
    image = dataset[0][0]
    for name, mask in dataset.concept_masks(0).items():
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"dataset.concept_masks(0)[{name!r}] has shape {tuple(mask.shape)}, but "
                             f"image 0 is {image.shape[-2]}x{image.shape[-1]}: a mask must have its image's size")


def _markdown(result: Any, document: dict[str, Any]) -> str:
    """Per layer: detectors and unique concepts (per family), then the top units."""
    src = document["source"]
    lines = [
        f"Network dissection of {src['checkpoint']} on {src['num_images']} images ({src['images']}): "
        f"threshold at the top {result.quantile:g} of each unit's activations, detector when IoU > "
        f"{result.iou_threshold:g}; {len(result.concepts)} concepts.",
        "",
        "| layer | units | detectors | unique concepts | "
        + " | ".join(f"{fam} (det. / uniq.)" for fam in _families(document)) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(_families(document)),
    ]
    for key, s in document["summary"].items():
        fams = " | ".join(f"{s['families'][f]['detectors']} / {s['families'][f]['unique_concepts']}"
                          for f in _families(document))
        lines.append(f"| {key} | {s['units']} | {s['detectors']} | {s['unique_concepts']} | {fams} |")
    for key, top in document["top_units"].items():
        lines += ["", f"### {key}", "", "| unit | label | IoU | detector |", "|---:|---|---:|:---:|"]
        lines += [f"| {u['unit']} | {u['label']} | {u['iou']:.3f} | {'yes' if u['detector'] else 'no'} |"
                  for u in top]
        concepts = document["summary"][key]["concepts"]
        lines += ["", f"Concepts detected: {', '.join(concepts) if concepts else 'none'}."]
    return "\n".join(lines)


def _families(document: dict[str, Any]) -> list[str]:
    first = next(iter(document["summary"].values()))
    return list(first["families"])
