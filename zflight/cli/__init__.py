"""``python -m zflight``: one entry point for training (Lightning) and every analysis.

``python -m zflight <subcommand> [options]``; ``python -m zflight --help`` lists them. The
Trainer subcommands (``fit``, ``validate``, ``test``, ``predict``) are the LightningCLI of
:mod:`zflight.cli.fit`; every other subcommand is a module of this package with a ``main(argv)``
built on the shared plumbing of :mod:`zflight.cli._common` (common options, ``--out`` written
whole or not at all, one ``error:`` line and exit status 2 for a bad value). A subcommand's
module is imported only when it runs, so ``fit`` does not pay for the analyses.

Adding a subcommand: a module ``zflight/cli/<name>.py`` with ``main(argv)``, and one line in
:data:`COMMANDS`.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMANDS", "TRAINER_COMMANDS", "main"]

PROG = "python -m zflight"

# Trainer methods, run by LightningCLI (the whole argument list goes to it).
TRAINER_COMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")

# name -> (module whose main(argv) runs it, the one-line description `--help` shows).
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("zflight.cli.fit", "train a model (LightningCLI: --config, --trainer.*, --model.*, --data.*)"),
    "validate": ("zflight.cli.fit", "run one validation epoch of a checkpoint"),
    "test": ("zflight.cli.fit", "test a checkpoint (10-crop on ImageNet configs)"),
    "predict": ("zflight.cli.fit", "predict with a checkpoint"),
    "visualize": ("zflight.cli.visualize", "Fig. 2: top-9 activations per feature map, projected beside their patches"),
    "occlusion": ("zflight.cli.occlusion", "Fig. 7: occlusion sensitivity maps of chosen images"),
    "invariance": ("zflight.cli.invariance", "Fig. 5: invariance to translation, scale and rotation"),
    "compare": ("zflight.cli.compare", "Fig. 6: compare the first layers of two checkpoints"),
    "correspondence": ("zflight.cli.correspondence", "Table 1: correspondence of object parts across images"),
    "dissect": ("zflight.cli.dissect", "Network Dissection: label each unit with the concept it detects (object, colour, part)"),
    "evaluate": ("zflight.cli.evaluate", "score attribution maps against the objects' masks (pointing game, deletion, sanity)"),
    "report": ("zflight.cli.report", "a unit explorer: one static folder (index.html) with every unit's top-9, label, evolution"),
    "layers": ("zflight.cli.layers", "list a model's modules with their type and output shape (the names --layers takes)"),
    "probe": ("zflight.cli.probe", "Table 7: linear probes layer by layer (transfer to new classes), trained vs random weights"),
    "pack": ("zflight.cli.pack", "pack an ImageNet-style folder into memory-mappable arrays"),
}


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of ``python -m zflight`` and the ``zflight`` script.

    Args:
        args: command-line arguments after the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        What the subcommand returns (the :class:`~zflight.cli.fit.ZFlightCLI` for the Trainer
        subcommands, the output of an analysis).

    Raises:
        SystemExit: status 0 after ``--help``; 2 with one ``error:`` line for a missing or
            unknown subcommand (with its close match).

    Example:
        >>> main(["occlusion", "--ckpt_path", "last.ckpt", "--out", "occ"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"{PROG}: error: unknown subcommand {name!r}{hint}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    if name in TRAINER_COMMANDS:
        # None: LightningCLI reads sys.argv itself (given the same list, it warns).
        return module.main(None if args is None else argv)
    return module.main(argv[1:])


def usage() -> str:
    """The text of ``python -m zflight --help``: every subcommand with its one-line description."""
    width = max(map(len, COMMANDS))
    rows = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join([
        f"usage: {PROG} <subcommand> [options]",
        "",
        "See what a convolutional network learned (Zeiler & Fergus, ECCV 2014).",
        "",
        "subcommands (each has its own --help):",
        *rows,
    ])
