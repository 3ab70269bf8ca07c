"""``python -m zflight dissect``: name what each unit detects (Network Dissection, Bau et al. 2017).

Usage::

    python -m zflight dissect --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out out/dissect [--layers conv1 conv2 conv3 conv4 conv5] [--num_images N] \\
        [--split val] [--concepts PATH] [--quantile 0.005] [--iou_threshold 0.04] \\
        [--units 8] [--examples 4] [--batch_size 64] [--workers N] [--device cpu] [--overwrite]
    python -m zflight dissect --model resnet18 --weights DEFAULT --concepts broden1_224 \\
        --layers layer3 layer4 [--categories object part scene texture color material] --out out/r18

The model: ``--ckpt_path`` (a zflight checkpoint) or ``--model`` (a torchvision name,
``timm:NAME`` or ``package.module:attr``, with ``--weights``, ``--checkpoint``,
``--model_args``; :func:`zflight.cli._common.source_arguments`). Every unit of ``--layers``
(default: conv1-conv5 of a zflight checkpoint, each resolution stage's output of another model)
is scored against the pixel-labelled concepts of the first ``--num_images`` images (default:
all) of:

- a Broden folder (``--concepts PATH`` holding ``index.csv``, as NetDissect's script downloads
  it: :class:`~zflight.data.BrodenDataset`), images at their stored size and normalized with
  the model's mean and std, masks at the segmentation size, ``--categories`` (default: all);
  each concept is scored over the images that annotate its category (Network Dissection's rule);
- a :class:`~zflight.data.ConceptFolder` (``--concepts PATH``: ``PATH/images/<name>.png``
  and ``PATH/masks/<concept>/<name>.png``), resized to the model's image size and normalized
  with its mean and std;
- else the checkpoint's embedded data set (``--split``; objects, colours, parts, distractors,
  background: :meth:`zflight.data.ShapesDataset.concept_masks`).

:func:`zflight.analysis.dissection.dissect` does the scoring; the rule is Bau et al.'s exactly.
Under ``torchrun`` each process dissects its shard and rank 0 writes.

Written into ``--out`` (all at once, or nothing on failure):

- ``dissection.json``: :meth:`Dissection.to_json` (every unit's IoU with every concept, its
  threshold, label and whether it is a detector), plus ``summary`` (detectors and unique
  concepts per layer and per category) and ``source`` (model, images, settings).
  ``python -m zflight visualize --dissection`` and ``report --dissection`` read it;
- ``tally.csv``: NetDissect's tally, one row per unit of every layer by descending score:
  ``layer, unit, category, label, score``, then ``<category>-label, <category>-iou`` for each
  category (the unit's best concept there); units count from 0;
- ``counts.csv``: Bau et al.'s count table, ``layer, category, units, detectors,
  unique_concepts`` (a row ``all`` per layer);
- ``dissection.md``: the same table, and the ``--units`` units of largest IoU with their label
  and IoU (also printed);
- ``dissect_<layer>.png``: Bau et al.'s Fig. 2 for those units: each unit's ``--examples``
  most activating images, with its mask ``M_k`` (the upsampled map above the unit's
  threshold, at the size it was scored) outlined and the rest dimmed, captioned
  ``conv5 unit 12 · object/ring 0.21``.

Bad input ends with one ``error:`` line naming the option, exit status 2, and nothing in
``--out``: an unknown layer (with the close names), ``--quantile`` outside (0, 1), a data set
without concept masks, masks of another size than their image (or than ``sh x sw`` in Broden),
a Broden folder without ``index.csv``'s companions (naming the file), a missing label PNG
(naming it and its ``index.csv`` line), an unknown ``--categories`` name (listing the valid
ones), an empty data set, ``--num_images`` larger than the data set.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    default_device,
    layers_or_default,
    load_sources,
    output_dir,
    process_rank,
    run_cli,
    safe_name,
    source_arguments,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
# DataLoader workers that read a Broden folder's label PNGs by default (decoding them can cost
# more than the forward pass of a small layer).
BRODEN_WORKERS = 4


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
        "part, scene, texture, colour, material, ...) its thresholded activation overlaps best, "
        "on Broden, a concept folder or the embedded data set, and draw the best units.",
    )
    source_arguments(p, images=None)
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of the checkpoint's embedded data set, without --concepts (default: val)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to dissect (default: conv1 … conv5 of a zflight checkpoint, else each "
                        "resolution stage's output)")
    p.add_argument("--num_images", type=int, default=None,
                   help="dissect the first N images (default: all of the split or folder)")
    p.add_argument("--concepts", default=None,
                   help="a Broden folder (holding index.csv) or a ConceptFolder (PATH/images/<name>.png, "
                        "PATH/masks/<concept>/<name>.png) instead of the embedded data set")
    p.add_argument("--categories", nargs="+", default=None,
                   help="Broden categories to score (default: all of category.csv)")
    p.add_argument("--quantile", type=float, default=0.005,
                   help="top fraction of each unit's activations inside its mask, in (0, 1) (default 0.005)")
    p.add_argument("--iou_threshold", type=float, default=0.04,
                   help="a unit whose best IoU exceeds this is a detector, in [0, 1] (default 0.04)")
    p.add_argument("--units", type=int, default=8,
                   help="units of largest IoU listed per layer and drawn (default 8)")
    p.add_argument("--examples", type=int, default=4, help="images per drawn unit (default 4)")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"DataLoader workers reading images and masks (default: {BRODEN_WORKERS} for a "
                        "Broden folder, else 0)")
    p.add_argument("--device", default=None,
                   help="torch device (default: this rank's GPU under torchrun, else cuda if any, else cpu)")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.dissection import ConceptSubset, dissect, unit_examples
    from zflight.figures import save_png
    from zflight.figures.dissection import dissection_panel

    for name in ("num_images", "units", "examples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    if args.workers is not None and args.workers < 0:
        raise AnalysisError(f"--workers must be >= 0, got {args.workers}")
    # Checked here too (dissect checks them after the model is read and the data is built).
    if not 0.0 < args.quantile < 1.0:
        raise AnalysisError(f"--quantile must be in (0, 1), both ends excluded, got {args.quantile}")
    if not 0.0 <= args.iou_threshold <= 1.0:
        raise AnalysisError(f"--iou_threshold must be in [0, 1], got {args.iou_threshold}")
    out = check_out(args.out, args.overwrite)
    device = default_device(args.device)
    source, _, _ = load_sources(args, images=False)
    model = source.model.eval()
    if args.layers is None and source.kind == "zflight":
        args.layers = list(LAYERS)
    layers = layers_or_default(args.layers, source)
    dataset, described, broden = _dataset(args, source)
    flag = "--concepts" if args.concepts else "--split"
    n = len(dataset) if args.num_images is None else args.num_images
    if len(dataset) == 0:
        raise AnalysisError(f"{flag}: the data set is empty: there are no images to dissect")
    if n > len(dataset):
        raise AnalysisError(f"--num_images: {n} is larger than the data set ({len(dataset)} images, {described})")
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
        raise AnalysisError(f"--device: cannot use {device}: {err}".splitlines()[0]) from None

    workers = args.workers if args.workers is not None else (BRODEN_WORKERS if broden else 0)
    try:
        result = dissect(model, dataset, layers, quantile=args.quantile, iou_threshold=args.iou_threshold,
                         batch_size=args.batch_size, num_workers=workers, progress=True)
    except (ValueError, OSError) as err:  # OSError: a missing or unreadable file, named
        message = str(err)
        # The data set's errors (a mask of another size, an unreadable file, a missing
        # concept_masks) are about what --concepts or --split named.
        if message.startswith(("dataset", "mask", "cannot read", "images", "label", "index.csv")) or isinstance(
            err, OSError
        ):
            raise AnalysisError(f"{flag}: {message}") from None
        raise
    units = {key: [u["unit"] for u in result.top_units(key, args.units)] for key in result.layers}
    examples = unit_examples(model, dataset, result, units, k=args.examples, batch_size=args.batch_size)

    summary = result.summary()
    document: dict[str, Any] = {
        **result.to_json(),
        "summary": summary,
        "top_units": {key: result.top_units(key, args.units) for key in result.layers},
        "source": {"model": source.facts()["model"], "images": described, "num_images": n,
                   "preprocessing": source.preprocess.describe()},
    }
    markdown = _markdown(result, document)
    if process_rank() == 0:
        with output_dir(out, overwrite=args.overwrite) as tmp:
            for key, ex in examples.items():
                s = summary[key]
                title = (f"{key}: {s['detectors']} of {s['units']} units detect a concept (IoU > "
                         f"{result.iou_threshold:g}), {s['unique_concepts']} unique; top {len(ex.units)} by IoU")
                save_png(dissection_panel(ex, title=title), tmp / f"dissect_{safe_name(key)}.png")
            write_json(document, tmp / "dissection.json")
            _write_tally(result, tmp / "tally.csv")
            _write_counts(summary, tmp / "counts.csv")
            (tmp / "dissection.md").write_text(markdown + "\n")
        print(markdown)
        print(f"wrote dissection.json, tally.csv, counts.csv, dissection.md and {len(examples)} PNG(s) to {out}")
    return document


def _dataset(args: argparse.Namespace, source: Any) -> tuple[Any, str, bool]:
    """The images with concept masks, a line saying where they come from, and whether Broden."""
    if args.concepts is not None:
        return concept_images(args.concepts, args.categories, source)
    if args.categories is not None:
        raise AnalysisError("--categories: only a Broden folder (--concepts PATH holding index.csv) has categories")
    from zflight.sources import default_dataset

    try:
        dataset = default_dataset(source, args.split)
    except (ValueError, FileNotFoundError) as err:
        flag = "--ckpt_path" if source.kind == "zflight" else "--concepts"
        why = str(err).removeprefix("images: ").split("; name a folder")[0]
        raise AnalysisError(f"{flag}: {why}; pass --concepts PATH (a Broden folder or a folder of images "
                            "with concept masks) to dissect it") from None
    if not callable(getattr(dataset, "concept_masks", None)):
        raise AnalysisError(f"--split: its data set ({type(dataset).__name__}) has no concept masks; "
                            "pass --concepts PATH")
    return dataset, f"{args.split} split of the embedded shapes data set", False


def concept_images(concepts: str, categories: Sequence[str] | None, source: Any) -> tuple[Any, str, bool]:
    """``--concepts PATH``: a Broden folder (it holds ``index.csv``) or a ``ConceptFolder``.

    Images are normalized with the model's mean and std. Shared by ``dissect`` and ``report``.

    Returns:
        The data set, a line saying what it is, and whether it is Broden.

    Raises:
        AnalysisError: one line naming ``--concepts`` or ``--categories``.
    """
    from zflight.data.broden import BrodenDataset, is_broden

    mean, std = source.preprocess.mean, source.preprocess.std
    if is_broden(concepts):
        try:
            broden = BrodenDataset(concepts, categories, mean=mean, std=std)
        except ValueError as err:
            message = str(err)
            if message.startswith("categories"):
                raise AnalysisError(f"--{message}") from None
            raise AnalysisError(f"--concepts: {message}") from None
        except FileNotFoundError as err:
            raise AnalysisError(f"--concepts: {err}") from None
        return broden, f"Broden {concepts} ({', '.join(broden.categories)})", True
    if categories is not None:
        raise AnalysisError("--categories: only a Broden folder (--concepts PATH holding index.csv) has categories")
    from zflight.data import ConceptFolder

    try:
        folder = ConceptFolder(concepts, image_size=source.image_size, mean=mean, std=std)
    except (FileNotFoundError, ValueError) as err:
        raise AnalysisError(f"--concepts: {err}") from None
    return folder, f"ConceptFolder {concepts}", False


def _check_first(dataset: Any) -> None:
    """Raise what dissect would on item 0: a mask of another size than its image (or than the
    data set's ``mask_size``), a missing file."""
    image = dataset[0][0]
    size = getattr(dataset, "mask_size", None)
    expected = tuple(size) if size is not None else tuple(image.shape[-2:])
    what = "dataset.mask_size" if size is not None else f"image 0 ({image.shape[-2]}x{image.shape[-1]})"
    for name, mask in dataset.concept_masks(0).items():
        if tuple(mask.shape) != expected:
            raise ValueError(f"dataset.concept_masks(0)[{name!r}] has shape {tuple(mask.shape)}, but "
                             f"{what} is {expected[0]}x{expected[1]}: a mask must have that size")


def _write_tally(result: Any, path: Path) -> None:
    """NetDissect's tally.csv, every layer's units (a ``layer`` column first)."""
    rows = [{"layer": key, **row} for key in result.layers for row in result.tally(key)]
    columns = list(rows[0]) if rows else ["layer", "unit", "category", "label", "score"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _write_counts(summary: dict[str, Any], path: Path) -> None:
    """Bau et al.'s count table: detectors and unique concepts per category per layer."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "category", "units", "detectors", "unique_concepts"])
        for key, s in summary.items():
            writer.writerow([key, "all", s["units"], s["detectors"], s["unique_concepts"]])
            for fam, c in s["families"].items():
                writer.writerow([key, fam, s["units"], c["detectors"], c["unique_concepts"]])


def _markdown(result: Any, document: dict[str, Any]) -> str:
    """Per layer: detectors and unique concepts (per category), then the top units."""
    src = document["source"]
    lines = [
        f"Network dissection of {src['model']} on {src['num_images']} images ({src['images']}): "
        f"threshold at the top {result.quantile:g} of each unit's activations, detector when IoU > "
        f"{result.iou_threshold:g}; {len(result.concepts)} concepts"
        + (f", each scored over the images that annotate its category, masks at "
           f"{result.mask_size[0]}x{result.mask_size[1]}" if result.mask_size else "") + ".",
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
