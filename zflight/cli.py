"""``python -m zflight``: LightningCLI for fit/validate/test/predict.

``python -m zflight fit --config configs/quickstart.yaml`` trains; ``--print_config`` shows the
full resolved configuration; ``--help`` lists every option with the docstrings of the classes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from zflight.module import ImageClassifier

__all__ = ["ZFlightCLI", "main", "ANALYSIS_COMMANDS"]

# Subcommands that are not Trainer methods: name -> "module:function". Each function takes the
# remaining arguments (a list of str) and parses them itself; they are imported only when used,
# so `python -m zflight fit` does not pay for them.
ANALYSIS_COMMANDS: dict[str, str] = {
    "occlusion": "zflight.analyses.occlusion_cli:main",
    "invariance": "zflight.analyses.invariance_cli:main",
    "compare": "zflight.analyses.compare_cli:main",
    "correspondence": "zflight.analyses.correspondence_cli:main",
    "visualize": "zflight.visualize:main",
    "pack": "zflight.data.pack:main",
}


class ZFlightCLI(LightningCLI):
    """LightningCLI with zflight's defaults.

    - the data module's ``num_classes`` and ``image_size`` are passed to the model, so a config
      names them once;
    - a ``checkpoint`` section configures the always-present ``ModelCheckpoint`` (``last.ckpt``
      plus the best epoch by ``val/acc1``), so ``--ckpt_path last`` resumes;
    - a bad value that a class rejects (a missing data folder, an unknown arch) ends the run with
      one ``error:`` line, like a wrong key does, instead of a traceback.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                # Any LightningDataModule can be named in a config; the embedded one is the default.
                "data": {"class_path": "zflight.data.ShapesDataModule"},
            }
        )

    def before_instantiate_classes(self) -> None:
        # Checkpoints are read with weights_only=True unless the user says otherwise.
        # `--ckpt_path last` should continue the run it names: point a version-less
        # TensorBoardLogger at the newest existing version, so the checkpoint folder that
        # Lightning searches for last.ckpt (and the TensorBoard run) is that run's, not a new one.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is not None and "weights_only" in config and config.get("weights_only") is None:
            # Never unpickle code from a checkpoint unless the user asks (`--weights_only false`);
            # torch < 2.6 would otherwise default to full unpickling.
            config.weights_only = True
        if config is None or config.get("ckpt_path") != "last":
            return
        logger = config.get("trainer.logger")
        if not (hasattr(logger, "class_path") and logger.class_path.endswith("TensorBoardLogger")):
            return
        if logger.init_args.get("version") is not None:
            return
        root = Path(logger.init_args.save_dir) / (logger.init_args.get("name") or "")
        versions = [
            int(p.name[len("version_") :])
            for p in root.glob("version_*")
            if p.name[len("version_") :].isdigit()
        ]
        if versions:
            logger.init_args.version = max(versions)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            # These come from our own argument checks and name the argument or path; a
            # traceback through jsonargparse would only bury that line.
            self.parser.error(str(err))

    @rank_zero_only
    def _report_outputs(self) -> None:
        trainer = self.trainer
        lines = []
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            lines.append(f"checkpoints: {ckpt.dirpath}")
            if getattr(ckpt, "best_model_path", ""):
                lines.append(f"best checkpoint: {ckpt.best_model_path}")
        if trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"TensorBoard logs: {trainer.logger.log_dir}")
            lines.append(f"view them with: tensorboard --logdir {trainer.logger.save_dir}")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            lines.append("final " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        print("\n".join(["", "zflight:"] + ["  " + line for line in lines]), flush=True)

    def after_fit(self) -> None:
        self._report_outputs()


def main(args: ArgsType = None) -> Any:
    """Entry point of ``python -m zflight`` and the ``zflight`` script.

    ``fit``, ``validate``, ``test`` and ``predict`` go to :class:`ZFlightCLI`; the analysis
    subcommands listed in ``ANALYSIS_COMMANDS`` go to their own parsers.

    Args:
        args: command-line arguments (``sys.argv[1:]`` when ``None``).

    Example:
        >>> main(["fit", "--config", "configs/quickstart.yaml"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if args is None else args)
    trainer_commands = ("fit", "validate", "test", "predict")
    if argv and not argv[0].startswith("-") and argv[0] not in (*trainer_commands, *ANALYSIS_COMMANDS):
        print(
            f"zflight: error: unknown subcommand {argv[0]!r}; choose from "
            f"{', '.join((*trainer_commands, *ANALYSIS_COMMANDS))}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if argv and argv[0] in ANALYSIS_COMMANDS:
        import importlib

        module_name, function_name = ANALYSIS_COMMANDS[argv[0]].split(":")
        return getattr(importlib.import_module(module_name), function_name)(argv[1:])
    return ZFlightCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "epilog": "analysis subcommands (each has its own --help): "
            + ", ".join(ANALYSIS_COMMANDS)
        },
        args=args,  # None: LightningCLI reads sys.argv itself (and does not warn)
    )
