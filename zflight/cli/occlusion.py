"""``python -m zflight occlusion``: the paper's Fig. 7 for a trained checkpoint, as PNGs and JSON.

Usage::

    python -m zflight occlusion --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out occlusion_out [--indices 0 1 2 | --images a.png b.png] [--size 16] [--stride 4] \\
        [--layer conv5] [--targets ...] [--fill 0.0] [--batch_size 64] [--overwrite]

Images come from the validation split of the checkpoint's data set (by index; the data module
is rebuilt from the checkpoint's ``datamodule_hyper_parameters``, or the embedded shapes data
at the model's image size when the checkpoint has none), or from image files (resized as the
data module's evaluation transform does, or to the model's image size). The target is the true
label for data set images and, for files, ``--targets`` (class names or numbers) or else the
predicted class.

Written into ``--out``: ``occlusion.png`` (one row per image), ``occlusion_<name>.png`` per
image and ``occlusion.json`` (the settings and every map's numbers). Everything is written into
a temporary folder next to ``--out`` that is renamed to ``--out`` only once complete, so a run
that fails leaves nothing that looks like a result. Bad input ends with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    class_indices,
    default_device,
    load_sources,
    output_dir,
    read_ckpt,
    rebuild_data,
    run_cli,
    safe_name,
    source_arguments,
    subcommand_parser,
    write_json,
)
from zflight.figures import save_figure

__all__ = ["main", "load_checkpoint"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the ``occlusion`` subcommand.

    Args:
        argv: the arguments after ``occlusion`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The JSON document that was written (also as ``<out>/occlusion.json``).

    Raises:
        SystemExit: with status 2 and one ``error:`` line on bad input.

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "occ", "--indices", "0", "1"])  # doctest: +SKIP
    """
    # Usage and one "error:" line, exit status 2.
    return run_cli(_parser(), argv, _run)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Rebuild the classifier and its data module from a zflight checkpoint.

    Args:
        path: a ``.ckpt`` file written by ``python -m zflight fit``.
        device: where to put the model.

    Returns:
        ``(module, datamodule)``: the :class:`~zflight.module.ImageClassifier` in eval mode, and
        the data module rebuilt from ``datamodule_hyper_parameters`` (the embedded shapes data
        at the model's image size when the checkpoint has none; ``None`` when it cannot be
        rebuilt, e.g. an image folder that is gone).

    Raises:
        AnalysisError: the file is missing or is not a zflight checkpoint.

    Example:
        >>> module, dm = load_checkpoint("runs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
    """
    module, dm_hparams = read_ckpt(path)
    module.to(device).eval()
    # None when it cannot be rebuilt: only data set indices need it; image files can do without.
    datamodule = rebuild_data(dm_hparams, int(module.hparams.get("image_size", 64)))
    return module, datamodule


# ----------------------------------------------------------------------------------- internals
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "occlusion",
        "Occlusion sensitivity (Zeiler & Fergus Fig. 7): PNG figures + JSON numbers, for a zflight "
        "checkpoint or any classifier (--model) on its data set or your images (--images).",
    )
    source_arguments(p, images="files")
    p.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    p.add_argument("--indices", type=int, nargs="+",
                   help="images by index in the data set or --images folder (default: 0 1 2 3; all given files)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of the checkpoint's data set the images come from (default: val)")
    p.add_argument("--targets", nargs="+", help="class (name or number) per image; default: its label when the "
                                                "labels are the model's classes, else the predicted class")
    p.add_argument("--size", type=int, help="side of the gray square in pixels (default: image size / 4)")
    p.add_argument("--stride", type=int, help="step between square positions (default: size / 4)")
    p.add_argument("--layer", help="layer whose strongest feature map is tracked (default: last conv, rectified)")
    p.add_argument("--fill", type=float, default=0.0, help="square value in normalized input space (0 = data mean)")
    p.add_argument("--batch_size", type=int, default=64, help="occluded images per forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.occlusion import default_geometry, occlusion_analysis, occlusion_record
    from zflight.figures.occlusion import occlusion_figure

    out = check_out(args.out, args.overwrite)
    device = default_device(args.device)
    source, dataset, _ = load_sources(args, split=args.split)
    if not source.is_classifier:
        raise AnalysisError(f"--model: occlusion maps the probability of a class, so it needs a classifier; "
                            f"{source.name} outputs {source.num_outputs}-channel feature maps")
    model = source.model.to(device)
    class_names = source.classes
    files = [str(f) for f in args.images] if args.images and not Path(args.images[0]).is_dir() else None
    indices = args.indices if args.indices is not None else (
        list(range(len(dataset))) if files else list(range(min(4, len(dataset)))))
    images, display, labels, names, sources = _pick(dataset, indices, files)
    targets, note = _targets(args.targets, labels, dataset, source, len(indices))
    if note:
        print(f"occlusion: {note}", flush=True)

    h, w = images.shape[-2:]
    size, stride = default_geometry(h, w)
    size = args.size if args.size is not None else size
    stride = args.stride if args.stride is not None else stride
    # A ValueError names its argument (size=, layer=); run_cli shows it as the option.
    maps, projections = occlusion_analysis(
        model, images.to(device), targets, size=size, stride=stride, layer=args.layer,
        fill=args.fill, batch_size=args.batch_size, progress=True,
    )

    document = {
        "checkpoint": str(Path(args.ckpt_path)) if args.ckpt_path else None,
        "model": source.facts(),
        "layer": maps.layer,
        "size": size,
        "stride": stride,
        "fill": args.fill,
        "image_size": list(maps.image_size),
        "class_names": class_names,
        "targets": "given (--targets)" if args.targets else (note or "the images' labels"),
        "images": [
            occlusion_record(maps, i, class_names=class_names, **sources[i], png=f"occlusion_{names[i]}.png")
            for i in range(len(names))
        ],
    }
    with output_dir(out, overwrite=args.overwrite) as tmp:
        titles = [f"{args.split} #{s['index']}" if "index" in s else Path(s["file"]).name for s in sources]
        fig = occlusion_figure(display, maps.to("cpu"), projections.cpu(), class_names=class_names, titles=titles)
        save_figure(fig, tmp / "occlusion.png")
        for i, name in enumerate(names):
            one = maps.to("cpu").subset(i)
            fig = occlusion_figure(display[i : i + 1], one, projections[i : i + 1].cpu(),
                                   class_names=class_names, titles=titles[i : i + 1])
            save_figure(fig, tmp / f"occlusion_{name}.png")
        write_json(document, tmp / "occlusion.json")
    _print_summary(document, out)
    return document


def _pick(dataset: Any, indices: Sequence[int], files: list[str] | None) -> tuple[Any, ...]:
    """``(images, display images, labels, safe names, what each image is)`` of ``indices``."""
    if not indices:
        raise AnalysisError("--indices: give at least one image index")
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise AnalysisError(f"--indices: {bad[0]} is out of range for {len(dataset)} images (0..{len(dataset) - 1})")
    items = [dataset[i] for i in indices]
    images = torch.stack([x for x, _ in items])
    labels = [int(y) for _, y in items]
    display = dataset.denormalize(images) if hasattr(dataset, "denormalize") else images.clamp(0, 1)
    if hasattr(dataset, "files"):
        names = [f"{k}_{safe_name(Path(dataset.files[i]).stem)}" for k, i in enumerate(indices)]
        sources = [{"file": str(dataset.files[i])} for i in indices]
    else:
        names = [f"val{i}" for i in indices]
        sources = [{"index": i} for i in indices]
    return images, display, labels, names, sources


def _targets(given: Sequence[str] | None, labels: list[int], dataset: Any, source: Any,
             n: int) -> tuple[list[int] | None, str]:
    """The class each map is about: ``--targets``, the labels when they are the model's classes, or predicted."""
    from zflight.sources import class_targets

    if given is not None:
        return class_indices(given, n, source.classes, "--targets"), ""
    mapping, note = class_targets(dataset, source)
    if mapping is None:
        return None, note
    return [mapping[y] for y in labels], ""


def _print_summary(document: dict[str, Any], out: Path) -> None:
    print(f"occlusion: layer {document['layer']}, square {document['size']} px, stride {document['stride']} px")
    print(f"{'image':>16} {'target':>12} {'p':>6} {'min p':>6} {'at (x0,y0)':>12} {'channel':>7}")
    for rec in document["images"]:
        name = str(rec.get("index", Path(rec.get("file", "")).name))[:16]
        x0, y0 = rec["lowest_prob_square"][:2]
        print(f"{name:>16} {rec['target_name'][:12]:>12} {rec['base_prob']:6.3f} {rec['lowest_prob']:6.3f} "
              f"{f'({x0},{y0})':>12} {rec.get('channel', '-'):>7}")
    print(f"wrote {out}/occlusion.png, {len(document['images'])} per-image PNGs and occlusion.json")
