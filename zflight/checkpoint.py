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

__all__ = [
    "load_classifier", "read_checkpoint", "rebuild_datamodule", "open_checkpoint", "load_torch_file",
    "check_state_dict",
]


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
    ckpt = open_checkpoint(path, map_location)
    if "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a zflight checkpoint (no hyper_parameters)")
    accepted = inspect.signature(ImageClassifier.__init__).parameters
    hparams = {k: v for k, v in dict(ckpt["hyper_parameters"]).items() if k in accepted and k != "self"}
    hparams["weights"] = None  # the weights come from the checkpoint
    hparams.pop("init_from", None)  # so does a fine-tuned model's (its source file may be gone)
    try:
        module = ImageClassifier(**hparams)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} does not match zflight's ImageClassifier: {err}") from None
    check_state_dict(ckpt["state_dict"], module, path)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), dict(ckpt.get("datamodule_hyper_parameters") or {})


def open_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``torch.load(weights_only=True)``; errors are one line.

    Args:
        path: the ``.ckpt`` file.
        map_location: ``torch.load``'s ``map_location``.
        mmap: map the tensors instead of reading them (cheap: for checking a file before a run).

    Returns:
        The checkpoint dict; it has a ``state_dict``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and what is wrong with it: not a torch file,
            truncated or corrupt, holding pickled objects that ``weights_only`` refuses, or
            no ``state_dict``.

    Example:
        >>> ckpt = open_checkpoint("runs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> sorted(ckpt)[:3]  # doctest: +SKIP
        ['callbacks', 'datamodule_hyper_parameters', 'epoch']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    ckpt = load_torch_file(path, map_location, mmap=mmap)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a zflight checkpoint (no state_dict)")
    return ckpt


def load_torch_file(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)``, with every failure as one line naming the file.

    Whatever the file holds (text, random bytes, nothing, another zip, half a checkpoint),
    ``torch.load`` may raise almost anything from its unpickler (``KeyError: 101`` for a text
    file holding ``hello``, ``IndexError: pop from empty list`` for a longer one); none of that
    reaches the user as a traceback.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``<path> <what is wrong>``: truncated or corrupt, not a torch file, pickled
            Python objects that weights-only loading refuses to run, or unreadable.

    Example:
        >>> load_torch_file("notes.txt")  # doctest: +SKIP
        ValueError: notes.txt is not a torch checkpoint file
    """
    import pickle
    import warnings
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, not a checkpoint")
    try:
        with warnings.catch_warnings():
            # On random bytes torch warns about the "pickle protocol" it thinks it sees.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "unsupported global" in text.lower():
            # torch's message is a paragraph on weights_only; the user needs the one fact.
            raise ValueError(
                f"{path} holds pickled Python objects that weights_only loading refuses to run "
                "(not a checkpoint written by zflight, or written with custom objects)"
            ) from None
        raise ValueError(f"{path} is not a torch checkpoint file (nor one weights-only loading can read)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        text = str(err)
        if "central directory" in text or isinstance(err, EOFError) or "truncated" in text.lower():
            reason = "is truncated or corrupt (cannot read its zip archive)"
        elif "_use_new_zipfile_serialization" in text or "invalid load key" in text:
            reason = "is not a torch checkpoint file"
        elif "inline_container" in text or "archive" in text:
            reason = "is a zip archive, but not a torch checkpoint"
        else:
            reason = f"cannot be read as a checkpoint ({type(err).__name__}: {text.splitlines()[0][:120] if text else ''})"
        raise ValueError(f"{path} {reason}") from None
    except Exception:  # the unpickler on arbitrary bytes: KeyError, IndexError, ValueError, ...
        raise ValueError(f"{path} is not a torch checkpoint file") from None


def check_state_dict(state_dict: dict[str, Any], module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Check that ``state_dict`` fits ``module`` (same keys, same shapes); else one line naming ``path``.

    Raises:
        ValueError: ``<path> is a checkpoint of another model: ...`` with the count of missing and
            unexpected keys and the first key whose shape differs.

    Example:
        >>> check_state_dict(ckpt["state_dict"], module, "last.ckpt")  # doctest: +SKIP
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if shapes:
        parts.append(shapes[0])
    raise ValueError(f"{path} is a checkpoint of another model: {'; '.join(parts)}")


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
