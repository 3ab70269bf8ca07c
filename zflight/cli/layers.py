"""``python -m zflight layers``: every module of a model, with its type and output shape.

Usage::

    python -m zflight layers --model resnet18 [--weights DEFAULT] [--checkpoint sd.pt]
    python -m zflight layers --model timm:convnext_atto
    python -m zflight layers --model mypackage.nets:Net --model_args '{"width": 2}'
    python -m zflight layers --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt

One image of the model's input size (zeros) goes through the network; each module's first
output shape is printed beside its dotted name (what ``--layers`` takes: a unique suffix works
too), its type and its parameter count. The layers the tools read by default (each resolution
stage's output, :func:`zflight.sources.default_layers`) are marked ``*``. Nothing is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from zflight.cli._common import ArgumentParser, load_sources, run_cli, source_arguments, subcommand_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run ``python -m zflight layers``: print the model's modules; return them as rows.

    Args:
        argv: the arguments after ``layers`` (``sys.argv[2:]`` when ``None``).

    Returns:
        One dict per module: ``name``, ``type``, ``output``, ``parameters``, ``default``.

    Raises:
        SystemExit: status 2 and one ``error:`` line on bad input.

    Example:
        >>> rows = main(["--model", "resnet18"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "layers",
        "List every module of a model with its type, its output shape on one image and its "
        "parameters: the names --layers takes. The default layers are marked *.",
    )
    source_arguments(p, images=None)
    p.add_argument("--image_size", type=int, default=None,
                   help="side of the image run through the model (default: the model's input size)")
    p.add_argument("--all", action="store_true",
                   help="also list modules the forward never calls (by default they are left out)")
    return p


def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from zflight.sources import layer_table

    source, _, _ = load_sources(args, images=False, quiet=True)
    size = args.image_size or source.image_size
    rows = layer_table(source.model, size)
    default = set(source.default_layers)
    for row in rows:
        row["default"] = row["name"] in default
    shown = [r for r in rows if args.all or r["output"] != "not called"]
    width = max([len(r["name"]) for r in shown] + [4]) + 2
    kind = max([len(r["type"]) for r in shown] + [4]) + 2
    out = max([len(r["output"]) for r in shown] + [6]) + 2
    facts = source.facts()
    print(f"{facts['model']} ({facts['network']}, {facts['weights']}), one {size}x{size} image; "
          f"{len(shown)} modules; * = a default layer")
    print(f"  {'name':<{width}}{'type':<{kind}}{'output':<{out}}parameters")
    for r in shown:
        mark = "*" if r["default"] else " "
        print(f"{mark} {r['name']:<{width}}{r['type']:<{kind}}{r['output']:<{out}}{r['parameters']:,}")
    print(f"default layers: {' '.join(source.default_layers) or 'none'}")
    return shown
