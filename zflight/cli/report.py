"""``python -m zflight report``: the unit explorer of a model, as one static folder.

Usage::

    python -m zflight report --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out report [--layers conv1 conv2 conv3 conv4 conv5] [--units N] [--occlusion_images 4] \\
        [--log_dir runs/quickstart/version_0] [--dissection FILE.json] [--scores scores.json] \\
        [--dissect_images 500] [--k 9] [--tile 32] [--batch_size 100] [--device cpu] [--overwrite]
    python -m zflight report --model resnet18 --checkpoint sd.pt --images photos/ --out report \\
        [--weights DEFAULT] [--resize 128 --image_size 112] [--units 64]

This module only parses the arguments, reads the files they name and calls
:func:`zflight.build_report` (:mod:`zflight.report`), which says what the page shows and where
each part comes from. Written into ``--out`` (all at once: a hidden folder beside it renamed at
the end, so a failed build leaves nothing): ``index.html``, ``report.css``, ``report.js``,
``report.json`` (the numbers shown), ``units/<layer>.js`` and ``units/<layer>.html`` (each
layer's units, loaded when the layer is opened; the second readable without JavaScript) and
the pictures, every link relative. Open ``index.html`` with a double click: no server, no
network.

The model and images: any source :mod:`zflight.sources` reads (``--ckpt_path``, or ``--model``
with ``--weights`` / ``--checkpoint``; ``--images DIR``, else the checkpoint's validation
images); the overview lists its facts (source, weights, preprocessing, where the class names
came from). Without ``--layers``, the default rule of :func:`zflight.sources.default_layers`.
A model that is not a classifier gets the unit pages and one line instead of the image section.
Dissection labels: read
from ``--dissection`` (a JSON of :meth:`zflight.analysis.dissection.Dissection.to_json`, as
``python -m zflight dissect`` writes it; a document holding it under ``"dissection"`` works
too), else computed here on the first ``--dissect_images`` images (0: skipped). Data-set-wide
explanation scores: ``--scores`` (the ``scores.json`` of ``python -m zflight evaluate``).
Feature evolution: the checkpoint's own FeatureEvolution state, else the newest checkpoint under
``--log_dir/checkpoints``; ``--log_dir``'s ``figures/evolution_<layer>.png`` are copied beside
each layer's strip.

Bad input ends with one ``error:`` line naming the option, exit status 2, before anything is
written: a missing checkpoint, an unknown layer (with close names), an ``--out`` that is a file,
``--units 0``, a missing ``--log_dir``, ``--dissection`` or ``--scores`` file.
"""

from __future__ import annotations

import argparse
import json
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
    run_cli,
    source_arguments,
    subcommand_parser,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``python -m zflight report``.

    Args:
        argv: the arguments after ``report`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The path of the written ``index.html``.

    Raises:
        SystemExit: status 2 and one ``error:`` line on bad input (nothing written to ``--out``).

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "report", "--units", "8"])  # doctest: +SKIP
        PosixPath('report/index.html')
    """
    return run_cli(_parser(), argv, _run)


# ----------------------------------------------------------------------------------- internals
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "report",
        "Write a unit explorer: a static folder (index.html + pictures) with every unit's top-9, "
        "dissection label, feature evolution and activation histogram, and the occlusion maps "
        "and explanation scores of a few images. Opens from disk, no server.",
    )
    source_arguments(p)
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layer names (default: conv1 … conv5 for zflight's networks, else each resolution "
                        "stage's output; `python -m zflight layers` lists them)")
    p.add_argument("--units", type=int, default=None,
                   help="units per layer: the first N channels (default: all)")
    p.add_argument("--occlusion_images", type=int, default=4,
                   help="images with occlusion maps and scores: the first N (default 4; 0: none)")
    p.add_argument("--log_dir", default=None,
                   help="the training run's folder (runs/<name>/version_<n>): its evolution figures and checkpoints")
    p.add_argument("--dissection", default=None,
                   help="a dissection JSON (Dissection.to_json) to take the labels from instead of dissecting here")
    p.add_argument("--concepts", default=None,
                   help="dissect here on a Broden folder (it holds index.csv) or a ConceptFolder instead of the "
                        "report's images (the first --dissect_images of it)")
    p.add_argument("--categories", nargs="+", default=None,
                   help="with a Broden --concepts: the categories scored (default: all)")
    p.add_argument("--dissect_images", type=int, default=500,
                   help="images dissected here when no --dissection is given and they have concept masks "
                        "(default 500; 0: none)")
    p.add_argument("--scores", default=None,
                   help="scores.json of `python -m zflight evaluate`: the data-set-wide explanation scores")
    p.add_argument("--k", type=int, default=9, help="top activations shown per unit (default 9)")
    p.add_argument("--tile", type=int, default=32, help="side of each top-k tile in pixels (default 32)")
    p.add_argument("--batch_size", type=int, default=100, help="images per forward pass (default 100)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    return p


def _run(args: argparse.Namespace) -> Path:
    from zflight import build_report
    from zflight.analysis.dissection import Dissection
    from zflight.checkpoint import open_checkpoint
    from zflight.sources import class_targets

    for name in ("units", "k", "tile", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    for name in ("occlusion_images", "dissect_images"):
        if getattr(args, name) < 0:
            raise AnalysisError(f"--{name} must be >= 0, got {getattr(args, name)}")
    out = check_out(args.out, args.overwrite)
    log_dir = _check_dir(args.log_dir, "--log_dir")
    dissection_doc = _read_json(args.dissection, "--dissection")
    scores_doc = _read_json(args.scores, "--scores")
    if scores_doc is not None and not isinstance(scores_doc.get("scores"), dict):
        raise AnalysisError(f"--scores: {args.scores} is not a scores.json of `python -m zflight evaluate` (no 'scores')")
    dissection = None
    if dissection_doc is not None:
        try:
            dissection = Dissection.from_json(dissection_doc.get("dissection", dissection_doc))
        except (KeyError, ValueError, TypeError) as err:
            raise AnalysisError(f"--dissection: {args.dissection} is not a dissection JSON ({err})") from None
    device = default_device(args.device)

    if args.concepts is not None and dissection is not None:
        raise AnalysisError("--concepts: give either --concepts (dissect here) or --dissection (a dissection made before)")
    if args.categories is not None and args.concepts is None:
        raise AnalysisError("--categories goes with --concepts (a Broden folder)")
    source, dataset, line = load_sources(args)
    layers = layers_or_default(args.layers, source)
    dissection_from = args.dissection or ""
    if args.concepts is not None:
        dissection, dissection_from = _dissect_concepts(args, source, layers, device)
    if args.occlusion_images > len(dataset):
        raise AnalysisError(f"--occlusion_images: {args.occlusion_images} is more than the {len(dataset)} images")
    try:
        model = source.model.to(device).eval()
    except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
        raise AnalysisError(f"--device: cannot use {args.device}: {err}".splitlines()[0]) from None
    run = open_checkpoint(args.ckpt_path, mmap=True) if args.ckpt_path else None
    facts = source.facts()
    if source.hparams:  # a zflight network: its architecture as the quickstart report showed it
        width = source.hparams.get("width")
        facts["network"] = str(source.hparams.get("arch", "?")) + (f", width {width}" if width is not None else "")
    mapping, _why = class_targets(dataset, source)
    with output_dir(out, overwrite=args.overwrite) as tmp:
        build_report(
            model, dataset, tmp, layers=layers, units=args.units, k=args.k, tile=args.tile,
            batch_size=args.batch_size, occlusion_images=args.occlusion_images, classifier=source.is_classifier,
            classes=source.classes or list(getattr(dataset, "classes", None) or []) or None,
            label_classes="predicted" if mapping is None else mapping, facts=facts,
            title=f"zflight report: {Path(args.ckpt_path or source.name).name}",
            checkpoint=str(args.ckpt_path or ""), data_description=line,
            dissection=dissection, dissection_from=dissection_from, dissect_images=args.dissect_images,
            scores=scores_doc, scores_from=args.scores or "", run=run, log_dir=log_dir,
        )
    index = out / "index.html"
    print(f"open {index.resolve().as_uri()}", flush=True)
    return index


def _dissect_concepts(args: argparse.Namespace, source: Any, layers: list[str], device: Any) -> tuple[Any, str]:
    """Network Dissection of ``layers`` on ``--concepts`` (Broden or a ConceptFolder), for the labels."""
    from zflight.analysis.dissection import ConceptSubset, dissect
    from zflight.cli.dissect import concept_images

    concepts, what, _ = concept_images(args.concepts, args.categories, source)
    if args.dissect_images == 0:
        raise AnalysisError("--dissect_images: 0 skips the dissection; drop --concepts, or dissect some images")
    n = min(args.dissect_images, len(concepts))
    model = source.model.to(device).eval()
    result = dissect(model, ConceptSubset(concepts, range(n)), layers, batch_size=args.batch_size, progress=True)
    return result, f"{what}, the first {n} images"


def _check_dir(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    folder = Path(path)
    if not folder.is_dir():
        raise AnalysisError(f"{flag}: no such folder: {folder}")
    return folder


def _read_json(path: str | None, flag: str) -> dict[str, Any] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise AnalysisError(f"{flag}: no such file: {file}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnalysisError(f"{flag}: {file} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"{flag}: {file} holds no JSON object")
    return data
