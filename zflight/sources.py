"""Which model, which images: one place that turns a user's naming of both into what every tool needs.

A model comes from exactly one of:

- a zflight checkpoint (``ckpt_path``, written by ``python -m zflight fit``): the network, its
  preprocessing and class names from the checkpoint's data section;
- a torchvision classification model by name (``"resnet18"``), with ``weights`` read through
  torchvision's own weights API (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
  ``"ResNet50_Weights.IMAGENET1K_V1"``), so that its cache (``$TORCH_HOME/hub/checkpoints``) is
  used;
- a timm model (``"timm:convnext_atto"``; ``weights="pretrained"`` for timm's weights);
- a class or function of the user's own code (``"package.module:attr"``), called with
  ``model_args``;

and optionally a weights file (``checkpoint``: a ``state_dict``, a ``{"state_dict": ...}`` file,
a Lightning ``.ckpt`` or a ``.safetensors`` file), always read without executing pickled code.

:func:`load_model` returns a :class:`ModelSource`: the network in eval mode (read through its
first tensor when its forward returns a tuple, a list or a dict), its :class:`Preprocess`, its
class names and where they came from, the layers the tools default to, and the facts a report
prints. :func:`image_folder` reads a folder of images (with class subfolders or flat) through
that preprocessing, one file at a time, so memory does not grow with the number of images.

Everything here is plain PyTorch: the command line's argument group
(:func:`zflight.cli._common.source_arguments`) is a thin layer over it, and a notebook uses it
directly.

Example:
    >>> from zflight.sources import load_model, image_folder
    >>> source = load_model("resnet18")  # random weights: no download
    >>> source.default_layers
    ['relu', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> images = image_folder("photos/", source.preprocess)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "ModelSource",
    "Preprocess",
    "ImageFiles",
    "load_model",
    "image_folder",
    "image_files",
    "default_dataset",
    "read_weights",
    "load_weights",
    "parse_model_args",
    "default_layers",
    "layer_table",
    "class_targets",
    "IMAGE_EXTENSIONS",
]

#: File endings (lower case) read as images by :func:`image_folder`.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# zflight's own networks are read at the paper's five convolutional layers.
_PAPER_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


# ---------------------------------------------------------------------------------- preprocessing
@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the model's input: shorter side, centre crop, normalization.

    Attributes:
        resize: the shorter side is resized to this many pixels.
        crop: the centre ``crop`` x ``crop`` square is kept.
        mean: per-channel mean subtracted (pixels in [0, 1]).
        std: per-channel std divided by.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        origin: where these numbers came from (printed, and shown in the report).

    Example:
        >>> p = Preprocess(256, 224)
        >>> p.describe()
        'shorter side 256, centre crop 224, bilinear, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (ImageNet defaults)'
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    origin: str = "ImageNet defaults"

    def __post_init__(self) -> None:
        # Named as the options that set them (--resize, --image_size).
        for name, option in (("resize", "resize"), ("crop", "image_size")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive int, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"image_size ({self.crop}) must be <= resize ({self.resize}): the crop is "
                             "taken from the resized image")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} needs 3 values (R G B), got {len(value)}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, got {self.interpolation!r}")

    def transform(self) -> Any:
        """The torchvision transform: PIL RGB image -> normalized ``[3, crop, crop]`` tensor."""
        from torchvision import transforms as T

        mode = getattr(T.InterpolationMode, self.interpolation.upper())
        return T.Compose([T.Resize(self.resize, interpolation=mode), T.CenterCrop(self.crop),
                          T.ToTensor(), T.Normalize(self.mean, self.std)])

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization of ``[..., 3, H, W]`` images, for display in [0, 1]."""
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x * std + mean).clamp(0.0, 1.0)

    def describe(self) -> str:
        """One line: the sizes, interpolation, mean, std and where they came from."""
        mean = tuple(round(v, 4) for v in self.mean)
        std = tuple(round(v, 4) for v in self.std)
        return (f"shorter side {self.resize}, centre crop {self.crop}, {self.interpolation}, "
                f"mean {mean}, std {std} ({self.origin})")


# ------------------------------------------------------------------------------------- the model
@dataclasses.dataclass
class ModelSource:
    """A network ready for zflight's tools, with what it takes to feed it and to describe it.

    Attributes:
        model: the network, in eval mode; its forward returns one tensor.
        kind: ``"zflight"``, ``"torchvision"``, ``"timm"`` or ``"import"``.
        name: the model as named (checkpoint path, ``resnet18``, ``timm:convnext_atto``,
            ``pkg.mod:Net``).
        weights: what the weights are (``"random (weights=None)"``, ``"ResNet18_Weights.IMAGENET1K_V1"``,
            ``"file sd.pt"``, ...).
        preprocess: how image files become its input.
        classes: class names in output order, or ``None``.
        classes_from: where the class names came from (or why there are none).
        default_layers: the layers the tools use when none are named (:func:`default_layers`).
        is_classifier: the output is ``[N, classes]`` scores.
        num_outputs: the size of the output's last dimension (classes, for a classifier).
        output_note: how the forward's output is read, when it is not a plain tensor.
        hparams: the zflight checkpoint's model hyperparameters (empty otherwise).
        data_hp: the zflight checkpoint's data-module hyperparameters (empty otherwise).

    Example:
        >>> source = load_model("mobilenet_v3_small")
        >>> source.is_classifier, source.num_outputs
        (True, 1000)
    """

    model: nn.Module
    kind: str
    name: str
    weights: str
    preprocess: Preprocess
    classes: list[str] | None
    classes_from: str
    default_layers: list[str]
    is_classifier: bool
    num_outputs: int
    output_note: str = ""
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_hp: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """The side of the model's (square) input."""
        return self.preprocess.crop

    def facts(self) -> dict[str, str]:
        """What a report prints about the model: source, weights, output, preprocessing, classes."""
        facts = {
            "model": f"{self.kind} {self.name}" if self.kind != "zflight" else f"zflight checkpoint {self.name}",
            "network": type(self.model).__name__,
            "weights": self.weights,
            "output": (f"{self.num_outputs} class scores" if self.is_classifier
                       else f"not a classifier (output of {self.num_outputs} channels)"),
            "preprocessing": self.preprocess.describe(),
            "class names": self.classes_from,
        }
        if self.output_note:
            facts["output"] += f"; {self.output_note}"
        return facts


def load_model(
    spec: str | None = None,
    *,
    ckpt_path: str | os.PathLike | None = None,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    model_args: Mapping[str, Any] | str | None = None,
    classes: str | os.PathLike | Sequence[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
) -> ModelSource:
    """Load a model from any source zflight reads; return it with its preprocessing and names.

    Args:
        spec: a torchvision model name (``"resnet18"``), ``"timm:NAME"`` or
            ``"package.module:attr"`` (a class or function of your code, imported from the
            current folder or the environment). Exactly one of ``spec`` and ``ckpt_path``.
        ckpt_path: a checkpoint written by ``python -m zflight fit``.
        weights: torchvision: ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
            ``"ResNet50_Weights.IMAGENET1K_V1"``; timm: ``"pretrained"``. ``None``: random
            weights (or the ``checkpoint`` file's).
        checkpoint: a weights file for ``spec``'s network (see :func:`read_weights`).
        model_args: keyword arguments for the builder: a dict or a JSON object.
        classes: class names (a file with one per line, or a list), overriding the source's.
        preprocess: overrides of the preprocessing (``resize``, ``crop``, ``mean``, ``std``);
            the rest comes from the weights, the checkpoint or ImageNet's defaults.

    Returns:
        A :class:`ModelSource` whose ``model`` is in eval mode.

    Raises:
        ValueError: one line naming the argument (``spec``, ``weights``, ``checkpoint``,
            ``model_args``, ``ckpt_path``, ``classes``) and what is wrong: an unknown model (with
            close names), an import that fails, a wrong keyword, a file that is not a
            checkpoint, weights of another architecture (missing and unexpected keys), weights
            that cannot be downloaded (with the file torchvision looks for).
        FileNotFoundError: a named file does not exist.

    Example:
        >>> source = load_model("resnet18", model_args={"num_classes": 10})
        >>> source.num_outputs
        10
    """
    if (spec is None) == (ckpt_path is None):
        raise ValueError("model: give exactly one of a model name (spec / --model) and a zflight "
                         "checkpoint (ckpt_path / --ckpt_path)")
    args = parse_model_args(model_args)
    if ckpt_path is not None:
        for name, value in (("weights", weights), ("checkpoint", checkpoint), ("model_args", model_args)):
            if value:
                raise ValueError(f"{name}: goes with --model; a zflight checkpoint holds its own network and weights")
        source = _from_zflight(ckpt_path)
    else:
        spec = str(spec).strip()
        if spec.startswith("timm:"):
            source = _from_timm(spec[len("timm:"):], weights, args, checkpoint)
        elif ":" in spec:
            source = _from_import(spec, weights, args)
        else:
            source = _from_torchvision(spec, weights, args)
        if checkpoint is not None:
            load_weights(source.model, checkpoint)
            source.weights = f"file {checkpoint}"
    source.model.eval()
    _finish(source, preprocess)
    if classes is not None:
        names = _read_classes(classes)
        if source.is_classifier and len(names) != source.num_outputs:
            raise ValueError(f"classes: {len(names)} names for a model with {source.num_outputs} outputs")
        source.classes = names
        source.classes_from = f"--classes {classes}" if not isinstance(classes, (list, tuple)) else "given"
    return source


def parse_model_args(model_args: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``model_args`` as a dict: a mapping as is, a JSON object parsed, ``None`` empty.

    Raises:
        ValueError: not a JSON object (the message names ``model_args``).

    Example:
        >>> parse_model_args('{"num_classes": 10}')
        {'num_classes': 10}
    """
    if model_args is None or model_args == "":
        return {}
    if isinstance(model_args, str):
        try:
            model_args = json.loads(model_args)
        except json.JSONDecodeError as err:
            raise ValueError(f"model_args: not JSON ({err.msg} at character {err.pos}); "
                             "give an object such as '{\"num_classes\": 10}'") from None
    if not isinstance(model_args, Mapping):
        raise ValueError(f"model_args: must be a JSON object of keyword arguments, got {type(model_args).__name__}")
    return dict(model_args)


def _from_zflight(ckpt_path: str | os.PathLike) -> ModelSource:
    from zflight.checkpoint import read_checkpoint, rebuild_datamodule

    try:
        module, data_hp = read_checkpoint(ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"ckpt_path: {err}") from None
    hparams = dict(module.hparams)
    image_size = int(hparams.get("image_size", 224))
    try:
        datamodule = rebuild_datamodule(data_hp, image_size)
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        datamodule = None
    # The data module when it can be rebuilt here; else its saved hyperparameters (an ImageNet
    # run's folder or pack need not be on this machine to read its preprocessing).
    def setting(name: str, default: Any) -> Any:
        value = getattr(datamodule, name, None)
        return value if value is not None else data_hp.get(name, default)

    mean = tuple(setting("mean", IMAGENET_MEAN))
    std = tuple(setting("std", IMAGENET_STD))
    crop = int(setting("crop_size", image_size))
    # A pack stores images at image_size (its resize); the folder module resizes to `resize`.
    resize = int(setting("resize", data_hp.get("image_size", crop) if "crop_size" in data_hp else crop))
    resize = max(resize, crop)
    classes = None
    with contextlib.suppress(OSError, RuntimeError, AttributeError, ValueError):
        names = getattr(datamodule, "classes", None)
        classes = list(names) if names is not None else None
    data_name = str(data_hp.get("_class_path", "zflight.data.ShapesDataModule")).rsplit(".", 1)[-1]
    return ModelSource(
        model=module.model, kind="zflight", name=str(ckpt_path),
        weights=f"trained by zflight fit ({hparams.get('arch', '?')})",
        preprocess=Preprocess(resize, crop, mean, std, origin=f"the checkpoint's {data_name}"),
        classes=classes,
        classes_from=f"the checkpoint's {data_name}" if classes else "none (the data module is not on this machine)",
        default_layers=[], is_classifier=True, num_outputs=0,
        hparams=hparams, data_hp={k: v for k, v in data_hp.items()},
    )


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _from_torchvision(name: str, weights: str | None, args: dict[str, Any]) -> ModelSource:
    import torchvision

    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"model: {name!r} is not a torchvision classification model{hint} (timm's: "
                         "timm:NAME; your own: package.module:attr)")
    enum = None
    if weights is not None:
        enum = _torchvision_weights(name, weights)
    builder = torchvision.models.get_model_builder(name)
    if enum is not None:
        _fetch_torchvision_weights(enum)
    try:
        model = builder(weights=enum, **args)
    except TypeError as err:
        raise ValueError(f"model_args: {name}() {_call_error(err)}") from None
    except ValueError as err:  # e.g. num_classes that contradicts the weights
        raise ValueError(f"model_args: {err}") from None
    if enum is not None:
        transforms = enum.transforms()
        pre = Preprocess(
            int(_first(transforms.resize_size)), int(_first(transforms.crop_size)),
            tuple(transforms.mean), tuple(transforms.std),
            interpolation=str(transforms.interpolation.value), origin=f"the weights {_weights_name(enum)}",
        )
        categories = enum.meta.get("categories")
        return ModelSource(model, "torchvision", name, _weights_name(enum), pre,
                           list(categories) if categories else None,
                           f"the weights' meta['categories'] ({_weights_name(enum)})" if categories else "none",
                           [], True, 0)
    return ModelSource(model, "torchvision", name, "random (weights=None)", _default_preprocess(),
                       None, "none", [], True, 0)


def _torchvision_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum of ``weights`` for model ``name``; one line if unknown."""
    import torchvision

    enum_cls = torchvision.models.get_model_weights(name)
    valid = ["DEFAULT"] + [w.name for w in enum_cls]
    if "." in weights:
        try:
            enum = torchvision.models.get_weight(weights)
        except (ValueError, KeyError, AttributeError):
            raise ValueError(f"weights: {weights!r} is not a torchvision weights name; {name} has "
                             f"{', '.join(valid)}") from None
        if type(enum) is not enum_cls:
            raise ValueError(f"weights: {weights} are not {name}'s weights ({enum_cls.__name__}: {', '.join(valid)})")
        return enum
    if weights == "DEFAULT":
        return enum_cls.DEFAULT
    if weights in enum_cls.__members__:
        return enum_cls[weights]
    raise ValueError(f"weights: {name} has no weights {weights!r}; choose from {', '.join(valid)}")


def _weights_name(enum: Any) -> str:
    return f"{type(enum).__name__}.{enum.name}"


def _fetch_torchvision_weights(enum: Any) -> None:
    """Make sure torchvision's cache holds ``enum``'s file; without a network, one line saying where.

    torchvision reads ``$TORCH_HOME/hub/checkpoints/<file>`` and downloads it when missing. The
    download is tried here (so its failure is one line, not a traceback from deep inside
    ``torch.hub``); with the file in place nothing touches the network.
    """
    from urllib.parse import urlparse

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / os.path.basename(urlparse(enum.url).path)
    if file.is_file():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(enum.url, str(file), progress=False)
    except Exception as err:  # any network or disk failure: urllib, ssl, socket, OSError
        with contextlib.suppress(OSError):
            file.unlink()
        reason = str(err).splitlines()[0][:100] if str(err) else type(err).__name__
        raise ValueError(
            f"weights: cannot download {_weights_name(enum)} ({reason}); torchvision looks for the file "
            f"{file}: put it there, or pass the weights with --checkpoint FILE") from None


def _from_timm(name: str, weights: str | None, args: dict[str, Any], checkpoint: Any) -> ModelSource:
    try:
        import timm
    except ImportError:
        raise ValueError("model: timm models need timm: pip install 'zflight[timm]' (or pip install timm)") from None
    if weights not in (None, "pretrained"):
        raise ValueError(f"weights: timm models take --weights pretrained (timm's own weights), got {weights!r}")
    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ValueError(f"model: {name!r} is not a timm model{hint}")
    try:
        model = timm.create_model(name, pretrained=weights == "pretrained", **args)
    except TypeError as err:
        raise ValueError(f"model_args: timm.create_model({name!r}) {_call_error(err)}") from None
    except (RuntimeError, OSError, ValueError) as err:
        if weights == "pretrained":
            line = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise ValueError(f"weights: cannot load timm's pretrained weights for {name} ({line}); timm reads "
                             "them from the Hugging Face hub cache (HF_HOME): put them there, or pass "
                             "--checkpoint FILE") from None
        raise ValueError(f"model: timm.create_model({name!r}) failed: {str(err).splitlines()[0]}") from None
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    resize = int(crop / float(cfg.get("crop_pct", 1.0) or 1.0))
    pre = Preprocess(max(resize, crop), crop, tuple(cfg["mean"]), tuple(cfg["std"]),
                     interpolation=cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in
                     ("bilinear", "bicubic", "nearest") else "bilinear",
                     origin=f"timm's data config of {name}")
    return ModelSource(model, "timm", name, "timm pretrained" if weights else "random (pretrained=False)",
                       pre, None, "none", [], True, 0)


def _from_import(spec: str, weights: str | None, args: dict[str, Any]) -> ModelSource:
    if weights is not None:
        raise ValueError("weights: an imported model takes its weights from --checkpoint FILE, not --weights")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model: {spec!r} is not package.module:attr")
    # The user's own code: importable from the current folder, as `python -m` would find it.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, and whatever the user's module raises at import
        raise ValueError(f"model: cannot import {module_name} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"model: {module_name} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if args:
            raise ValueError(f"model_args: {spec} is a module instance; it takes no arguments")
        model = obj
    elif callable(obj):
        try:
            inspect.signature(obj).bind(**args)
        except TypeError as err:
            raise ValueError(f"model_args: {spec}() {_call_error(err)}") from None
        except ValueError:
            pass  # no signature to check (a builtin): let the call say it
        model = obj(**args)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: {spec}(...) returned {type(model).__name__}, not a torch.nn.Module")
    else:
        raise ValueError(f"model: {spec} is a {type(obj).__name__}, not a module class or function")
    return ModelSource(model, "import", spec, "as built (random)", _default_preprocess(), None, "none", [], True, 0)


def _call_error(err: TypeError) -> str:
    """``got an unexpected keyword argument 'x'`` from a TypeError about a call."""
    text = str(err)
    for marker in ("got an unexpected keyword argument", "missing", "got multiple values", "takes"):
        k = text.find(marker)
        if k >= 0:
            return text[k:]
    return text


def _default_preprocess() -> Preprocess:
    return Preprocess(256, 224, origin="ImageNet defaults")


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def _finish(source: ModelSource, preprocess: Mapping[str, Any] | None) -> None:
    """Apply preprocessing overrides, read the output through one tensor, find the default layers."""
    if preprocess:
        given = {k: v for k, v in preprocess.items() if v is not None}
        if given:
            fields = dataclasses.asdict(source.preprocess)
            if "crop" in given and "resize" not in given and fields["resize"] < given["crop"]:
                fields["resize"] = given["crop"]
            fields.update(given)
            named = sorted("image_size" if k == "crop" else k for k in given)
            fields["origin"] = f"{fields['origin']}, with {', '.join(named)} given"
            source.preprocess = Preprocess(**fields)
    probe = torch.zeros(1, 3, source.image_size, source.image_size)
    try:
        out, trace = _trace(source.model, probe)
    except Exception as err:
        raise ValueError(f"model: {source.name} fails on a {source.image_size}x{source.image_size} image: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    note = ""
    if not isinstance(out, torch.Tensor):
        tensor, note = _output_tensor(out)
        if tensor is None:
            raise ValueError(f"model: {source.name}'s forward returns {type(out).__name__} without a tensor")
        _read_first_tensor(source.model)
        out = tensor
    source.output_note = note
    source.is_classifier = out.dim() == 2
    source.num_outputs = int(out.shape[1]) if out.dim() >= 2 else int(out.numel())
    if source.classes is not None and source.is_classifier and len(source.classes) != source.num_outputs:
        source.classes_from += f" ({len(source.classes)} names for {source.num_outputs} outputs: not used)"
        source.classes = None
    names = dict(source.model.named_modules())
    if all(any(n == p or n.endswith("." + p) for n in names) for p in _PAPER_LAYERS):
        source.default_layers = list(_PAPER_LAYERS)
    else:
        source.default_layers = default_layers(source.model, trace=trace)


def _output_tensor(out: Any) -> tuple[torch.Tensor | None, str]:
    """The tensor zflight reads from a forward's output, and a note saying which it is."""
    if isinstance(out, torch.Tensor):
        return out, ""
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"], "its forward returns a dict: read through its 'logits'"
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                return value, f"its forward returns a dict: read through its first tensor {key!r}"
        return None, ""
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits, f"its forward returns {type(out).__name__}: read through its .logits"
    if isinstance(out, (tuple, list)):
        for k, value in enumerate(out):
            if isinstance(value, torch.Tensor):
                return value, f"its forward returns a {type(out).__name__}: read through its first tensor (item {k})"
    return None, ""


def _read_first_tensor(model: nn.Module) -> None:
    """Make ``model``'s forward return the one tensor zflight reads, keeping every module name.

    A wrapper module would rename every layer (``layer4`` -> ``inner.layer4``) and every
    state-dict key; a forward hook would stay on the user's model. So the model's class is
    replaced by a subclass whose forward reads the output through :func:`_output_tensor`.
    """
    cls = type(model)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _output_tensor(cls.forward(self, *args, **kwargs))[0]  # type: ignore[return-value]

    model.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                 "__doc__": cls.__doc__})


# ------------------------------------------------------------------------------- weights files
def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without executing pickled code; return its tensors by name.

    Reads a ``state_dict`` saved with ``torch.save``, a file holding ``{"state_dict": ...}``
    (a Lightning ``.ckpt`` among them) or ``{"model": ...}``, and ``.safetensors`` files.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: not a checkpoint (text, random bytes, an empty
            file, another zip, a truncated file), pickled objects that weights-only loading
            refuses, or no tensors in it.

    Example:
        >>> torch.save(torch.nn.Linear(2, 1).state_dict(), "/tmp/lin.pt")
        >>> sorted(read_weights("/tmp/lin.pt"))
        ['bias', 'weight']
    """
    from zflight.checkpoint import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"checkpoint: {path} is a safetensors file: pip install safetensors") from None
        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise ValueError(f"checkpoint: {path} is not a readable safetensors file "
                             f"({str(err).splitlines()[0][:100] if str(err) else type(err).__name__})") from None
    try:
        data = load_torch_file(path)
    except ValueError as err:
        raise ValueError(f"checkpoint: {err}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, Mapping) else {}
    if not tensors:
        raise ValueError(f"checkpoint: {path} holds no weights (no state_dict of tensors)")
    return tensors


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights file ``path`` into ``model``; one line when they do not fit.

    A prefix that a wrapper added to every key (a LightningModule's ``model.``, DDP's
    ``module.``) is stripped when that makes the keys match; entries of other submodules of a
    Lightning checkpoint (metrics, a loss) are then left out.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_weights`; and ``checkpoint: <file> does not fit
            <Network>``, with the first missing and unexpected keys and the first shape that differs.

    Example:
        >>> load_weights(torchvision.models.resnet18(), "resnet18.pt")  # doctest: +SKIP
    """
    state = _match_prefix(read_weights(path), model.state_dict())
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        if shapes:
            parts.append(shapes[0])
        raise ValueError(f"checkpoint: {path} does not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model


def _match_prefix(state: dict[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``state`` with the key prefix stripped that makes most of its keys the model's."""
    if not own or all(k in own for k in state):
        return state
    best, best_hits = "", sum(k in own for k in state)
    prefixes = {k[: len(k) - len(o)] for k in state for o in own if k.endswith("." + o) or k == o}
    for prefix in prefixes:
        hits = sum(k[len(prefix):] in own for k in state if k.startswith(prefix))
        if hits > best_hits:
            best, best_hits = prefix, hits
    if not best:
        return state
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


# ----------------------------------------------------------------------------------------- layers
def _trace(model: nn.Module, images: torch.Tensor) -> tuple[Any, list[tuple[str, nn.Module, Any]]]:
    """Run ``model`` once; return its output and ``(name, module, output)`` in order of completion."""
    from zflight.attribution._layers import preserve_modes

    trace: list[tuple[str, nn.Module, Any]] = []
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(
                    lambda m, i, o, name=name: trace.append((name, m, o))))
        with preserve_modes(model, eval_mode=True), torch.no_grad():
            out = model(images)
    finally:
        for h in handles:
            h.remove()
    return out, trace


def default_layers(model: nn.Module, image_size: int = 224, *, trace: list[Any] | None = None,
                   at_most: int = 5) -> list[str]:
    """The layers zflight's tools read when none are named: the output of each resolution stage.

    The rule: run one image and look at the modules one nesting level at a time (``layer1``
    is level 1, ``features.3`` level 2). At a level, walk its modules in the order they finish
    and cut the walk wherever the spatial size of their output shrinks; each run's last module
    is a stage's output (a module at a larger size than the one before it is a branch still at
    an earlier resolution, and is skipped). Pooling and flattening modules do not count (they are where a stage
    ends, not its features), nor do 1x1 outputs (global pools, squeeze-and-excitation). The
    level with the most stages wins (the shallower on a tie), and its deepest ``at_most``
    stages are returned. ResNet gives ``relu, layer1 .. layer4``; VGG the last ReLU before each
    pool; MobileNet, EfficientNet, ConvNeXt and RegNet their stages; zflight's networks (which
    :func:`load_model` reads at ``conv1 .. conv5``) their ReLUs.

    Args:
        model: the network.
        image_size: side of the square image it is run on.
        trace: a trace already made (internal).
        at_most: the most layers returned.

    Returns:
        Dotted module names, shallow to deep (empty when no module outputs feature maps).

    Example:
        >>> default_layers(torchvision.models.vgg11())
        ['features.1', 'features.4', 'features.9', 'features.14', 'features.19']
    """
    if trace is None:
        _, trace = _trace(model, torch.zeros(1, 3, image_size, image_size))
    producer: dict[int, type] = {}
    kept = []  # every output stays alive, so that no id() is reused during the walk
    candidates: list[tuple[int, str, int]] = []  # (level, name, size)
    for name, module, out in trace:
        if not isinstance(out, torch.Tensor):
            continue
        kept.append(out)
        # A container returning its last child's tensor has that child's kind (a pool, say).
        kind = producer.setdefault(id(out), type(module))
        if out.dim() == 4 and not issubclass(kind, _POOLS) and min(out.shape[-2:]) > 1:
            candidates.append((name.count(".") + 1, name, int(out.shape[-2])))
    best: list[str] = []
    for level in sorted({c[0] for c in candidates}):
        stages: list[str] = []
        last_size = None
        for lvl, name, size in candidates:
            # A larger size after a smaller one is a branch still at an earlier resolution
            # (inside an Inception or ShuffleNet block), not a new stage.
            if lvl != level or (last_size is not None and size > last_size):
                continue
            if size == last_size:
                stages[-1] = name
            else:
                stages.append(name)
            last_size = size
        if len(stages) > len(best):
            best = stages
    return best[-at_most:]


def layer_table(model: nn.Module, image_size: int = 224) -> list[dict[str, Any]]:
    """Every module of ``model`` with its type, output shape on one image and parameter count.

    Rows come in the order modules are defined (``named_modules``); a module the forward does
    not call has output ``"not called"``; one called several times shows its first output.

    Example:
        >>> layer_table(torchvision.models.resnet18())[0]
        {'name': 'conv1', 'type': 'Conv2d', 'output': '64x112x112', 'parameters': 9408}
    """
    _, trace = _trace(model, torch.zeros(1, 3, image_size, image_size))
    first: dict[str, Any] = {}
    for name, _module, out in trace:
        first.setdefault(name, out)
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        out = first.get(name, None)
        rows.append({
            "name": name,
            "type": type(module).__name__,
            "output": _shape_text(out) if name in first else "not called",
            "parameters": sum(p.numel() for p in module.parameters()),
        })
    return rows


def _shape_text(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return "x".join(str(s) for s in out.shape[1:]) or "scalar"
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_shape_text(o) for o in out) + ")"
    if isinstance(out, Mapping):
        return "{" + ", ".join(f"{k}: {_shape_text(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


# ----------------------------------------------------------------------------------------- images
class ImageFiles(Dataset):
    """Image files as ``(image, label)`` items, read one at a time through a :class:`Preprocess`.

    Made by :func:`image_folder` (a folder, with class subfolders or flat) or
    :func:`image_files` (a list of files). Each item is decoded when it is read, so memory does
    not grow with the number of images.

    Attributes:
        files: the image paths, in item order.
        labels: each file's class index (-1 without classes).
        classes: the class names (the subfolders' names), or ``None`` for flat files.
        preprocess: the preprocessing applied.
        root: the folder, or ``None`` for a list of files.

    Example:
        >>> ds = image_folder("photos", Preprocess(128, 112))  # doctest: +SKIP
        >>> image, label = ds[0]  # doctest: +SKIP
    """

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: list[str] | None,
                 preprocess: Preprocess, root: Path | None = None) -> None:
        self.files = [Path(f) for f in files]
        self.labels = [int(y) for y in labels]
        self.classes = classes
        self.preprocess = preprocess
        self.root = root
        self._transform = preprocess.transform()

    @property
    def labelled(self) -> bool:
        """Whether the files have classes (a folder with class subfolders)."""
        return self.classes is not None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from zflight.data.datamodules import _load_rgb

        return self._transform(_load_rgb(str(self.files[index]))), self.labels[index]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization, for display in [0, 1]."""
        return self.preprocess.denormalize(x)

    def name(self, index: int) -> str:
        """The file's path relative to the folder (its name, for a list of files)."""
        f = self.files[index]
        return str(f.relative_to(self.root)) if self.root is not None else f.name

    def __repr__(self) -> str:
        where = self.root if self.root is not None else f"{len(self.files)} files"
        kind = f"{len(self.classes)} classes" if self.classes else "no classes"
        return f"ImageFiles({where}, {len(self)} images, {kind})"


def image_folder(root: str | os.PathLike, preprocess: Preprocess, *, flag: str = "images") -> ImageFiles:
    """Read a folder of jpg, png, webp, bmp or tif images: with class subfolders, or flat.

    With subfolders (torchvision's ``ImageFolder`` layout, ``root/<class>/**/<file>``) the
    labels and class names come from the folder names, sorted; otherwise the images directly in
    ``root`` are read without labels. Files are listed now and decoded when read.

    Args:
        root: the folder.
        preprocess: how each file becomes the model's input.
        flag: the argument named in errors.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no image file in it (one line naming the folder).

    Example:
        >>> ds = image_folder("photos", load_model("resnet18").preprocess)  # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag}: no such folder: {root}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    with_files = [d for d in subdirs if any(_images_under(d))]
    files: list[Path] = []
    labels: list[int] = []
    classes: list[str] | None = None
    if with_files:
        classes = [d.name for d in with_files]
        for k, d in enumerate(with_files):
            found = sorted(_images_under(d))
            files += found
            labels += [k] * len(found)
        loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise ValueError(f"{flag}: {root} has both class subfolders and {len(loose)} images directly "
                             f"in it (e.g. {loose[0].name}): use one layout")
    else:
        files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        labels = [-1] * len(files)
    if not files:
        raise ValueError(f"{flag}: {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}), "
                         "directly or in class subfolders")
    return ImageFiles(files, labels, classes, preprocess, root)


def image_files(paths: Sequence[str | os.PathLike], preprocess: Preprocess, *, flag: str = "images") -> ImageFiles:
    """Image files named one by one (or one folder, read by :func:`image_folder`).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: no file given, or a file that is not an image (one line naming it).
    """
    if not paths:
        raise ValueError(f"{flag}: give image files or a folder")
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return image_folder(paths[0], preprocess, flag=flag)
    files = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise ValueError(f"{flag}: {path} is a folder; give one folder alone, or image files")
        if not path.is_file():
            raise FileNotFoundError(f"{flag}: no such file: {path}")
        files.append(path)
    return ImageFiles(files, [-1] * len(files), None, preprocess, None)


def _images_under(folder: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(folder, followlinks=True):
        for n in names:
            if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."):
                yield Path(dirpath) / n


def _read_classes(classes: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    path = Path(classes)
    if not path.is_file():
        raise FileNotFoundError(f"classes: no such file: {path}")
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"classes: cannot read {path} as text ({err})") from None
    if not names:
        raise ValueError(f"classes: {path} is empty (give one class name per line)")
    return names


def class_targets(dataset: Any, source: ModelSource) -> tuple[list[int] | None, str]:
    """Map a folder's labels to the model's class indices, when they index the same classes.

    The folder's classes index the model's when every folder class name is one of the model's
    class names (ImageNet's ``n01440764`` folders for a zflight ImageNet checkpoint, say), or
    when a zflight data set and its checkpoint share their classes.

    Returns:
        ``(model class of each folder label, "")``, or ``(None, why)`` when the predicted class
        must stand in for the label (the note says so; print it).

    Example:
        >>> class_targets(image_folder("photos", source.preprocess), source)  # doctest: +SKIP
        (None, 'the folder's classes (cat, dog) are not the model's: the predicted class is used')
    """
    folder = getattr(dataset, "classes", None)
    if folder is None:
        if isinstance(dataset, ImageFiles):
            return None, "the images have no classes (a flat folder): the predicted class is used"
        return list(range(source.num_outputs)), ""  # a zflight data set: labels are the model's
    model_classes = source.classes
    if model_classes is not None and all(c in model_classes for c in folder):
        return [model_classes.index(c) for c in folder], ""
    if not source.is_classifier:
        return None, "the model is not a classifier"
    shown = ", ".join(list(folder)[:4]) + (", ..." if len(folder) > 4 else "")
    why = "has no class names" if model_classes is None else "names other classes"
    return None, (f"the folder's classes ({shown}) do not index the model's classes (the model {why}): "
                  "the predicted class is used")


def default_dataset(source: ModelSource, split: str = "val") -> Any:
    """The images a zflight checkpoint was trained on: its embedded data set, or its folder.

    Args:
        source: a :class:`ModelSource` of kind ``"zflight"``.
        split: ``"train"``, ``"val"`` or ``"test"`` (the embedded data set); ``"train"`` or
            ``"val"`` for a folder or pack.

    Raises:
        ValueError: another kind of source (name a folder of images), or a checkpoint whose data
            is not on this machine.

    Example:
        >>> ds = default_dataset(load_model(ckpt_path="last.ckpt"))  # doctest: +SKIP
    """
    if source.kind != "zflight":
        raise ValueError(f"images: {source.kind} model {source.name} has no images of its own: name a folder "
                         "of images (--images DIR)")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test; got {split!r}")
    data_hp = {k: v for k, v in source.data_hp.items() if not k.startswith("_")}
    # A folder module's settings name its root (older checkpoints saved no class path).
    folder = any(k in data_hp for k in ("root", "train_dir", "data_dir"))
    class_path = str(source.data_hp.get("_class_path", "zflight.data.ImageFolderDataModule" if folder
                                        else "zflight.data.ShapesDataModule"))
    if class_path.endswith("ShapesDataModule") or not source.data_hp:
        from zflight.data import ShapesDataset

        splits = {"train": 0, "val": 1, "test": 2}
        size = int(data_hp.get(f"{split}_size", {"train": 8000, "val": 1000, "test": 1000}[split]))
        return ShapesDataset(
            size,
            image_size=int(data_hp.get("image_size", source.hparams.get("image_size", 64))),
            seed=3 * int(data_hp.get("seed", 0)) + splits[split],
            clutter=float(data_hp.get("clutter", 1.0)),
        )
    from zflight.checkpoint import rebuild_datamodule

    where = data_hp.get("root") or data_hp.get("data_dir") or data_hp.get("train_dir")
    try:
        datamodule = rebuild_datamodule({"_class_path": class_path, **source.data_hp}, source.image_size)
        datamodule.setup("fit" if split == "train" else "validate")
        dataset = getattr(datamodule, f"{split}_dataset", None)
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as err:
        raise ValueError(f"images: the checkpoint's data ({where}) cannot be read on this machine "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); name a folder "
                         "of images (--images DIR)") from None
    if dataset is None:
        raise ValueError(f"images: the checkpoint's data module has no {split} split; name a folder (--images DIR)")
    if not hasattr(dataset, "denormalize"):
        dataset.denormalize = source.preprocess.denormalize  # type: ignore[attr-defined]
    return dataset
