"""``python -m zflight fit|validate|test|predict``: the LightningCLI.

``python -m zflight fit --config configs/quickstart.yaml`` trains; ``--print_config`` shows the
full resolved configuration; ``--help`` lists every option with the docstrings of the classes.

A wrong key or option ends with a few lines that name it and its close match (not the whole
usage), and an abbreviated option is an error, never taken for a longer one.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from zflight.callbacks.random_state import RandomState
from zflight.module import ImageClassifier

__all__ = ["ZFlightCLI", "ZFlightArgumentParser", "main"]

PROG = "python -m zflight"


class ZFlightArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with short errors and no abbreviated options.

    - ``allow_abbrev=False``: ``--trainer.max_epoch 1`` is an error, never taken for
      ``--trainer.max_epochs`` (argparse's prefix matching would start a run with it).
    - A wrong key or option prints at most a few lines: the error, the close match of the key
      (``--trainer.max_epocs``: did you mean ``--trainer.max_epochs``?) and where ``--help``
      is, instead of jsonargparse's whole usage block; exit status 2.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> Any:  # never returns
        from jsonargparse._common import debug_mode_active  # jsonargparse's own switch

        if not self.exit_on_error or debug_mode_active():
            # jsonargparse parses tentatively with exit_on_error off and expects a raise.
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        # jsonargparse's type errors run to ten lines: keep the key, the reason and the value.
        text = ": ".join(line.rstrip(":") for line in lines[:2]) if lines else "bad arguments"
        given = next((line for line in lines if line.startswith("Given value:")), None)
        if given and given not in text:
            text += f" ({given[0].lower()}{given[1:]})"
        hint = _close_options(parser, str(message))
        sys.stderr.write(f"{prog}: error: {text}\n")
        if hint:
            sys.stderr.write(f"{prog}: did you mean {hint}?\n")
        sys.stderr.write(f"{prog}: every option: {prog} --help\n")
        self.exit(2)


def _close_options(parser: LightningArgumentParser, message: str) -> str:
    """The close matches, among ``parser``'s options, of the keys an error message names."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    words = re.findall(r"(?:--)?[A-Za-z_][\w.]*\.[\w.]+|--[\w.]+", message)
    matches = []
    for word in dict.fromkeys(words):
        key = word if word.startswith("--") else f"--{word}"
        if key in options:
            continue
        matches += difflib.get_close_matches(key, options, n=1, cutoff=0.75)
    return ", ".join(dict.fromkeys(matches))


class ZFlightCLI(LightningCLI):
    """LightningCLI with zflight's defaults.

    - the data module's ``num_classes`` and ``image_size`` are passed to the model, so a config
      names them once;
    - a ``checkpoint`` section configures the always-present ``ModelCheckpoint`` (``last.ckpt``
      plus the best epoch by ``val/acc1``), so ``--ckpt_path last`` resumes;
    - a :class:`~zflight.callbacks.RandomState` is always added too (unless the config lists
      one), so that resumed run goes on as the uninterrupted run would have (``docs/resume.md``);
    - a bad value that a class rejects (a missing data folder, an unknown arch) ends the run with
      one ``error:`` line, like a wrong key does, instead of a traceback; so does a callback's
      layer the network lacks (:class:`~zflight.callbacks.CallbackConfigError`, at setup).
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

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Every checkpoint carries the random state: a run resumed with `--ckpt_path last` must
        # draw what the uninterrupted run would have drawn.
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        if not any(isinstance(c, RandomState) for c in [*listed, *callbacks]):
            callbacks = [*callbacks, RandomState()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            self._check_ckpt_path()
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            # These come from our own argument checks and name the argument or path; a
            # traceback through jsonargparse would only bury that line.
            self._error(str(err))

    def _run_subcommand(self, subcommand: str) -> None:
        from zflight.callbacks import CallbackConfigError

        try:
            super()._run_subcommand(subcommand)
        except CallbackConfigError as err:
            # A callback's layer the network lacks, found at setup (before the first step): its
            # line names the callback and the layer; Lightning's traceback would only bury it.
            self._remove_unstarted_run()
            self._error(str(err))

    def _remove_unstarted_run(self) -> None:
        """Delete the TensorBoard event file this process opened for a run that never started.

        By setup the logger has opened its writer, so the run that failed before its first step
        would stay behind as an empty ``version_N`` in TensorBoard. Only this process's file goes
        (its name ends in ``.<pid>.<n>``; a resumed run's older files stay), and the folder only
        when nothing else is in it.
        """
        logger = getattr(self.trainer, "logger", None)
        writer = getattr(logger, "_experiment", None)  # None: no writer was opened, nothing written
        if writer is None:
            return
        writer.close()
        folder = Path(writer.log_dir)
        for file in folder.glob(f"events.out.tfevents.*.{os.getpid()}.*"):
            file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of --ckpt_path before anything else, and a
        # file that is no checkpoint would end in torch's traceback: say it in one line first.
        from zflight.checkpoint import open_checkpoint

        path = self._ckpt_file()
        if path is not None:
            try:
                open_checkpoint(path, mmap=True)
            except (FileNotFoundError, ValueError) as err:
                self._error(f"--ckpt_path: {err}")
        super()._parse_ckpt_path()

    def _error(self, message: str) -> None:
        """One ``error:`` line from the subcommand's parser (so it says ``python -m zflight fit``)."""
        subcommand = self.config.get("subcommand")
        parser = getattr(self, "_subcommand_parsers", {}).get(subcommand, self.parser)
        parser.error(message)

    def _ckpt_file(self) -> str | None:
        """``--ckpt_path`` when it names a file to check (not Lightning's ``last``/``best``/...)."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        path = config.get("ckpt_path") if config is not None else None
        if not path or path in ("last", "best", "hpc") or str(path).startswith("registry"):
            return None
        if config.get("weights_only") is False:
            return None  # the user trusts the file: Lightning unpickles it as they asked
        return str(path)

    def _check_ckpt_path(self) -> None:
        """A ``--ckpt_path`` file that is no checkpoint of this model: one line before any run.

        The file is memory-mapped (``torch.load(mmap=True)``), so the check reads almost
        nothing; Lightning loads it for real when the run starts.
        """
        from zflight.checkpoint import check_state_dict, open_checkpoint

        path = self._ckpt_file()
        if path is None:
            return
        try:
            ckpt = open_checkpoint(path, mmap=True)
            check_state_dict(ckpt["state_dict"], self.model, path)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"--ckpt_path: {err}") from None

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


def main(args: ArgsType = None) -> ZFlightCLI:
    """Run a Trainer subcommand: ``args`` starts with ``fit``, ``validate``, ``test`` or ``predict``.

    Args:
        args: command-line arguments after the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        The :class:`ZFlightCLI`, after the subcommand ran.

    Example:
        >>> main(["fit", "--config", "configs/quickstart.yaml"])  # doctest: +SKIP
    """
    try:
        return ZFlightCLI(
            ImageClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_class=ZFlightArgumentParser,
            parser_kwargs={"prog": PROG},
            args=None if args is None else list(args),  # None: LightningCLI reads sys.argv (no warning)
        )
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Destroy the DDP process group, if a run made one, before the interpreter exits.

    Lightning leaves it open after ``fit``; a gloo group still open at interpreter exit can abort
    a process ("terminate called without an active exception") after the run has finished,
    and the launcher then kills the other ranks.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
