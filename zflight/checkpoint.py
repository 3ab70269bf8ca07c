"""Loading a checkpoint written by ``python -m zflight fit``: the classifier and its data module.

One loader for every consumer (``visualize``, the analysis subcommands, the benchmarks):
:func:`load_classifier` rebuilds the :class:`~zflight.module.ImageClassifier` from the
checkpoint's ``hyper_parameters`` and loads its ``state_dict``, reading the file with
``torch.load(..., weights_only=True)`` (nothing in it is executed);
:func:`read_checkpoint` also returns the data module's saved hyperparameters, and
:func:`rebuild_datamodule` turns those back into a data module.

Errors name the file: :class:`FileNotFoundError` for a missing file, :class:`ValueError` for a
file that cannot be read, is not a zflight checkpoint, or does not fit ``ImageClassifier``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_classifier", "read_checkpoint", "rebuild_datamodule"]


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Return the :class:`~zflight.module.ImageClassifier` of a zflight checkpoint, in eval mode.

    Only ``ImageClassifier.__init__``'s own arguments are taken from ``hyper_parameters``
    (LightningCLI adds entries such as ``_instantiator``); ``weights`` is set to ``None``, as
    the weights come from the checkpoint (no pretrained download).

    Args:
        path: a ``.ckpt`` file written by ``python -m zflight fit``.
        map_location: where the tensors are loaded (``torch.load``'s ``map_location``).

    Returns:
        The ``ImageClassifier`` in eval mode; its network is ``.model``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read, is not a zflight checkpoint, or does not match
            ``ImageClassifier``.

    Example:
        >>> module = load_classifier("runs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> module.model(images).argmax(1)  # doctest: +SKIP
    """
    return read_checkpoint(path, map_location)[0]


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """Return ``(classifier in eval mode, the data module's saved hyperparameters)``.

    The classifier is the one :func:`load_classifier` returns. The data module's
    hyperparameters are the checkpoint's ``datamodule_hyper_parameters`` (empty when it has
    none), ``_class_path`` included when present (see :func:`rebuild_datamodule`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read, is not a zflight checkpoint, or does not match
            ``ImageClassifier``.

    Example:
        >>> module, data_hp = read_checkpoint("last.ckpt")  # doctest: +SKIP
    """
    from zflight.module import ImageClassifier

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: name it, no pickle trace
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a zflight checkpoint (no state_dict/hyper_parameters)")
    accepted = inspect.signature(ImageClassifier.__init__).parameters
    hparams = {k: v for k, v in dict(ckpt["hyper_parameters"]).items() if k in accepted and k != "self"}
    hparams["weights"] = None  # the weights come from the checkpoint
    try:
        module = ImageClassifier(**hparams)
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} does not match zflight's ImageClassifier: {err}") from None
    return module.eval(), dict(ckpt.get("datamodule_hyper_parameters") or {})


def rebuild_datamodule(data_hp: dict[str, Any], image_size: int = 64) -> Any:
    """Rebuild a data module from a checkpoint's ``datamodule_hyper_parameters``.

    ``_class_path`` (written by LightningCLI) picks the class, ``zflight.data.ShapesDataModule``
    when absent; the other ``_``-prefixed entries are dropped. Empty ``data_hp`` gives the
    embedded shapes data at ``image_size``.

    Args:
        data_hp: the saved hyperparameters (see :func:`read_checkpoint`).
        image_size: the model's image size, used when ``data_hp`` is empty.

    Returns:
        The data module (not set up).

    Raises:
        ImportError, AttributeError, TypeError, ValueError, OSError: the class cannot be found
            or built (e.g. an image folder that is gone).

    Example:
        >>> module, data_hp = read_checkpoint("last.ckpt")  # doctest: +SKIP
        >>> dm = rebuild_datamodule(data_hp, module.hparams["image_size"])  # doctest: +SKIP
    """
    if not data_hp:
        from zflight.data import ShapesDataModule

        return ShapesDataModule(image_size=int(image_size))
    class_path = data_hp.get("_class_path", "zflight.data.ShapesDataModule")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{k: v for k, v in data_hp.items() if not k.startswith("_")})
