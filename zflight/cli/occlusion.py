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
    ArgumentParser,
    subcommand_parser,
    AnalysisError,
    check_out,
    class_indices,
    data_classes,
    display_images,
    load_image_files,
    output_dir,
    read_ckpt,
    rebuild_data,
    run_cli,
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
        "Occlusion sensitivity (Zeiler & Fergus Fig. 7): PNG figures + JSON numbers.",
    )
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by `python -m zflight fit`")
    p.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--indices", type=int, nargs="+", help="validation images by index (default: 0 1 2 3)")
    src.add_argument("--images", nargs="+", help="image files instead of data set images")
    p.add_argument("--targets", nargs="+", help="class (name or number) per --images file; default: predicted")
    p.add_argument("--size", type=int, help="side of the gray square in pixels (default: image size / 4)")
    p.add_argument("--stride", type=int, help="step between square positions (default: size / 4)")
    p.add_argument("--layer", help="layer whose strongest feature map is tracked (default: last conv, rectified)")
    p.add_argument("--fill", type=float, default=0.0, help="square value in normalized input space (0 = data mean)")
    p.add_argument("--batch_size", type=int, default=64, help="occluded images per forward pass")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from zflight.analysis.occlusion import default_geometry, occlusion_analysis, occlusion_record
    from zflight.figures.occlusion import occlusion_figure

    out = check_out(args.out, args.overwrite)
    if args.targets is not None and args.images is None:
        raise AnalysisError("--targets goes with --images (data set images use their true labels)")
    module, datamodule = load_checkpoint(args.ckpt_path, args.device)
    model = module.model
    image_size = int(module.hparams.get("image_size", 64))
    class_names = data_classes(datamodule)

    if args.images is not None:
        images, display, names = load_image_files(args.images, datamodule, image_size)
        targets = _file_targets(args.targets, len(args.images), class_names)
        sources = [{"file": str(Path(f))} for f in args.images]
    else:
        indices = args.indices if args.indices is not None else [0, 1, 2, 3]
        images, display, targets, names = _load_indices(indices, datamodule)
        sources = [{"index": i} for i in indices]

    h, w = images.shape[-2:]
    size, stride = default_geometry(h, w)
    size = args.size if args.size is not None else size
    stride = args.stride if args.stride is not None else stride
    # A ValueError names its argument (size=, layer=); run_cli shows it as the option.
    maps, projections = occlusion_analysis(
        model, images.to(args.device), targets, size=size, stride=stride, layer=args.layer,
        fill=args.fill, batch_size=args.batch_size, progress=True,
    )

    document = {
        "checkpoint": str(Path(args.ckpt_path)),
        "layer": maps.layer,
        "size": size,
        "stride": stride,
        "fill": args.fill,
        "image_size": list(maps.image_size),
        "class_names": class_names,
        "images": [
            occlusion_record(maps, i, class_names=class_names, **sources[i], png=f"occlusion_{names[i]}.png")
            for i in range(len(names))
        ],
    }
    with output_dir(out, overwrite=args.overwrite) as tmp:
        titles = [f"val #{s['index']}" if "index" in s else Path(s["file"]).name for s in sources]
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


def _load_indices(
    indices: Sequence[int], datamodule: Any
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
    if datamodule is None:
        raise AnalysisError("--indices: the checkpoint's data set cannot be rebuilt here; pass --images files")
    try:
        datamodule.setup("validate")
    except (OSError, ValueError, RuntimeError) as err:
        raise AnalysisError(f"--indices: cannot set up the checkpoint's data set: {err}") from None
    ds = getattr(datamodule, "val_dataset", None)
    if ds is None:
        raise AnalysisError("--indices: the checkpoint's data module has no validation split")
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise AnalysisError(f"--indices: {bad} outside the validation split (0..{len(ds) - 1})")
    items = [ds[i] for i in indices]
    images = torch.stack([x for x, _ in items])
    targets = [int(y) for _, y in items]
    return images, display_images(images, datamodule, ds), targets, [f"val{i}" for i in indices]


def _file_targets(targets: Sequence[str] | None, n: int, class_names: list[str] | None) -> list[int] | None:
    return None if targets is None else class_indices(targets, n, class_names, "--targets")


def _print_summary(document: dict[str, Any], out: Path) -> None:
    print(f"occlusion: layer {document['layer']}, square {document['size']} px, stride {document['stride']} px")
    print(f"{'image':>16} {'target':>12} {'p':>6} {'min p':>6} {'at (x0,y0)':>12} {'channel':>7}")
    for rec in document["images"]:
        name = str(rec.get("index", Path(rec.get("file", "")).name))[:16]
        x0, y0 = rec["lowest_prob_square"][:2]
        print(f"{name:>16} {rec['target_name'][:12]:>12} {rec['base_prob']:6.3f} {rec['lowest_prob']:6.3f} "
              f"{f'({x0},{y0})':>12} {rec.get('channel', '-'):>7}")
    print(f"wrote {out}/occlusion.png, {len(document['images'])} per-image PNGs and occlusion.json")
