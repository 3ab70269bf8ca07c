"""Plumbing shared by every subcommand but the Trainer's (``visualize``, ``occlusion``,
``invariance``, ``compare``, ``correspondence``, ``pack``): the parser, one-line errors, the
output folder written all at once, JSON, the checkpoint and the embedded data set.

* :func:`subcommand_parser`, :class:`ArgumentParser`, :class:`AnalysisError` and :func:`run_cli`:
  options are never abbreviated, and a bad input ends with one ``error:`` line (naming the
  option and its close match), exit 2.
* :func:`check_out` and :func:`output_dir`: ``--out`` must not exist unless ``--overwrite``;
  everything is written into a temporary folder beside ``--out`` that is renamed to ``--out``
  once complete, so a failed run never leaves a folder that looks like a result.
* :func:`write_json`, :func:`read_ckpt`, :func:`load_network`, :func:`embedded_dataset`,
  :func:`pick_images`, :func:`common_arguments`.
* Image files instead of data set images (``--images``): :func:`rebuild_data`,
  :func:`load_image_files` (resized and normalized as the data module's evaluation transform
  does), :func:`class_indices` (class names or numbers), :func:`data_classes`,
  :func:`display_images`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflight.figures.grids import write_json

__all__ = [
    "ArgumentParser",
    "subcommand_parser",
    "AnalysisError",
    "run_cli",
    "check_out",
    "output_dir",
    "write_json",
    "read_ckpt",
    "load_network",
    "embedded_dataset",
    "pick_images",
    "checkpoint_arguments",
    "common_arguments",
    "rebuild_data",
    "data_classes",
    "data_mean_std",
    "display_images",
    "load_image_files",
    "class_indices",
    "safe_name",
    "source_arguments",
    "load_sources",
    "join_process_group",
    "process_rank",
    "default_device",
    "layers_or_default",
    "paper_or_stage_layers",
]


class AnalysisError(ValueError):
    """A bad input to a subcommand; its message is the one line the user sees."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with zflight's two rules for a command line.

    - An option is never abbreviated (``allow_abbrev=False``): ``--layer`` is not taken for
      ``--layers``.
    - A parse error is one line, ``<prog>: error: <message>``, exit status 2, with the close
      match of an unknown option (``--stirde``: did you mean ``--stride``?) and no usage block:
      ``--help`` has that.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's signature; never returns
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            options = [o for a in self._actions for o in a.option_strings]
            words = [w.split("=", 1)[0] for w in unknown.group(1).split() if w.startswith("-")]
            close = [m for w in words for m in difflib.get_close_matches(w, options, n=1)]
            if close:
                message += f" (did you mean {' '.join(close)}?)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def subcommand_parser(name: str, description: str) -> ArgumentParser:
    """Return the parser of ``python -m zflight <name>``, described by ``description``.

    Example:
        >>> p = subcommand_parser("occlusion", "Occlusion sensitivity (Fig. 7).")
        >>> p.prog
        'python -m zflight occlusion'
    """
    return ArgumentParser(prog=f"python -m zflight {name}", description=description)


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], Any],
    *,
    catch: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError),
) -> Any:
    """Parse ``argv`` and call ``body(args)``; a ``catch`` error ends with one ``error:`` line (exit 2).

    Args:
        parser: the subcommand's parser (:func:`subcommand_parser`).
        argv: its arguments (``sys.argv[2:]`` when ``None``).
        body: the work.
        catch: the exceptions shown as one line (default: any ``FileNotFoundError`` or
            ``ValueError``: :class:`AnalysisError`, and the analysis functions' errors, which
            name the argument or the layer).

    Example:
        >>> run_cli(parser, ["--out", "x"], lambda args: None)  # doctest: +SKIP
    """
    from zflight.data.datamodules import UnreadableImageError

    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    joined = join_process_group()
    try:
        return body(args)
    except (*catch, UnreadableImageError) as err:
        message = _as_option(parser, str(err).strip() or type(err).__name__)
        if isinstance(err, UnreadableImageError) and not message.startswith("--"):
            message = f"--images: {message}"
        parser.error(message)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _as_option(parser: argparse.ArgumentParser, message: str) -> str:
    """Name the option a library error is about: ``layer='x' is not ...`` -> ``--layer: layer=...``.

    The analysis functions name their Python argument (``size``, ``layer``); the user typed an
    option. A message that starts with an argument whose option (or plural, ``--layers``) this
    parser has gets that option in front; one that already names an option is left alone.
    """
    match = re.match(r"([A-Za-z_]\w*)\b", message)
    if message.startswith("-") or match is None:
        return message
    options = {o for action in parser._actions for o in action.option_strings}
    for option in (f"--{match.group(1)}", f"--{match.group(1)}s"):
        if option in options:
            return f"{option}: {message}"
    return message


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``out`` as a ``Path`` if a run may write it (call it before any long work).

    Raises:
        AnalysisError: ``out`` exists and is not a folder, or exists and ``overwrite`` is false.
    """
    out = Path(out)
    if process_rank() != 0:
        return out  # rank 0 checks and writes --out (see output_dir)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out: {out} exists and is not a folder")
    if out.exists() and not overwrite:
        raise AnalysisError(f"--out: {out} already exists; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def output_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh folder beside ``out``; on success it is renamed to ``out``.

    A failure removes the temporary folder, so ``out`` is either complete or absent (or the
    previous complete result, untouched). With ``overwrite`` the old ``out`` is moved aside
    before the new one is renamed into place, so at every moment ``out`` is one whole result.

    Args:
        out: the folder to create.
        overwrite: replace an existing ``out`` (else that is an error, see :func:`check_out`).

    Raises:
        AnalysisError: see :func:`check_out`.

    Example:
        >>> with output_dir("out/invariance") as tmp:  # doctest: +SKIP
        ...     (tmp / "a.json").write_text("{}")
    """
    if process_rank() != 0:
        # Under torchrun every rank runs the analysis (its collectives need them all); rank 0
        # alone writes --out, the others draw into a scratch folder that is then removed.
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="zflight-rank"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    out = check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(out, "partial")
    try:
        yield tmp
        if out.exists():
            old = _fresh_dir(out, "old")
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def join_process_group() -> bool:
    """Join the process group that ``torchrun`` (or SLURM through it) set up; ``True`` if joined here.

    ``torchrun --nproc_per_node N -m zflight visualize|dissect|report ...`` starts one process
    per GPU with ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` in the environment. Each process
    joins one group (NCCL with a GPU each, gloo on CPUs), and the analyses that stream over a data
    set (:func:`~zflight.analysis.top_activations`, :func:`~zflight.analysis.dissect`) then give
    each rank its shard of the images and merge exactly; rank 0 alone writes ``--out``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and os.environ.get("ZFLIGHT_DIST_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def process_rank() -> int:
    """This process's rank in the joined process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def default_device(device: str | None) -> torch.device:
    """``--device``, else this rank's GPU under torchrun, else ``cuda`` if there is one, else the CPU.

    Raises:
        AnalysisError: a device torch does not know (the message names ``--device``).
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise AnalysisError(f"--device: {err}") from None


def _fresh_dir(out: Path, kind: str) -> Path:
    """A new hidden folder beside ``out`` (same file system, so renaming it is atomic)."""
    # Not tempfile.mkdtemp: its folders are private (0700), and this one becomes the result.
    path = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.{kind}"
    path.mkdir()
    return path


def read_ckpt(ckpt_path: str | os.PathLike, flag: str = "--ckpt_path") -> tuple[Any, dict[str, Any]]:
    """:func:`zflight.checkpoint.read_checkpoint`, its errors as one line naming ``flag``.

    Raises:
        AnalysisError: the file is missing or is not a zflight checkpoint.
    """
    from zflight.checkpoint import read_checkpoint

    try:
        return read_checkpoint(ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        raise AnalysisError(f"{flag}: {err}") from None


def load_network(
    ckpt_path: str | os.PathLike, flag: str = "--ckpt_path"
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load a zflight checkpoint: ``(network in eval mode, model hparams, data-module hparams)``.

    The network is ``ImageClassifier.model`` (zfnet, alexnet_zf or a torchvision model), from
    :func:`zflight.checkpoint.read_checkpoint`.

    Args:
        ckpt_path: a ``.ckpt`` written by ``python -m zflight fit``.
        flag: the option named in error messages.

    Returns:
        The network, the model's hyperparameters, the data module's (empty if not saved).

    Raises:
        AnalysisError: the file is missing or is not a zflight checkpoint.

    Example:
        >>> model, hp, data_hp = load_network("runs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
    """
    module, data_hp = read_ckpt(ckpt_path, flag)
    data_hp = {k: v for k, v in data_hp.items() if not k.startswith("_")}
    return module.model.eval(), dict(module.hparams), data_hp


def embedded_dataset(hparams: dict[str, Any], data_hp: dict[str, Any], split: str = "val") -> Any:
    """Return the split of the embedded shapes data set the checkpoint was trained with.

    ``ShapesDataModule`` draws split ``k`` (train 0, val 1, test 2) from seed ``3*seed + k``;
    the sizes, image size, seed and clutter come from the checkpoint's data-module
    hyperparameters, with the data module's defaults where missing.

    Args:
        hparams: the model's hyperparameters (for ``image_size`` when the data's are missing).
        data_hp: the data module's hyperparameters.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A :class:`~zflight.data.ShapesDataset`.

    Raises:
        AnalysisError: the checkpoint was not trained on the embedded data set, or a bad split.

    Example:
        >>> ds = embedded_dataset({"image_size": 64}, {}, "val")  # doctest: +SKIP
    """
    from zflight.data import ShapesDataset

    splits = {"train": 0, "val": 1, "test": 2}
    if split not in splits:
        raise AnalysisError(f"--split must be one of train, val, test; got {split!r}")
    # ImageFolderDataModule saves a root folder; the embedded data module does not.
    if any(k in data_hp for k in ("root", "train_dir", "data_dir")):
        raise AnalysisError("the checkpoint was not trained on the embedded shapes data set; "
                            "these subcommands read images from it by index")
    size = int(data_hp.get(f"{split}_size", {"train": 8000, "val": 1000, "test": 1000}[split]))
    return ShapesDataset(
        size,
        image_size=int(data_hp.get("image_size", hparams.get("image_size", 64))),
        seed=3 * int(data_hp.get("seed", 0)) + splits[split],
        clutter=float(data_hp.get("clutter", 1.0)),
    )


def pick_images(dataset: Any, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images [N, C, H, W], labels [N])`` of ``dataset`` at ``indices``.

    Raises:
        AnalysisError: no indices, or one out of range (the message names ``--indices``).

    Example:
        >>> x, y = pick_images(ShapesDataset(20), [0, 3])  # doctest: +SKIP
    """
    if not indices:
        raise AnalysisError("--indices: give at least one image index")
    n = len(dataset)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise AnalysisError(f"--indices: {bad[0]} is out of range for a split of {n} images (0..{n - 1})")
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ckpt_path`` (the checkpoint read), ``--out`` and ``--overwrite`` (the folder written)."""
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `python -m zflight fit`")
    parser.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def common_arguments(
    parser: argparse.ArgumentParser, *, indices: Sequence[int] | None, images: bool = False
) -> None:
    """Add ``--ckpt_path``, ``--out``, ``--overwrite`` (:func:`checkpoint_arguments`), ``--split``
    (and ``--indices``).

    With ``images``, also ``--images`` (image files), mutually exclusive with ``--indices``.
    """
    checkpoint_arguments(parser)
    parser.add_argument("--split", default="val", choices=["train", "val", "test"],
                        help="split of the embedded data set the images come from (default: val)")
    src = parser.add_mutually_exclusive_group() if images else parser
    if indices is not None:
        src.add_argument("--indices", type=int, nargs="+", default=list(indices),
                         help=f"image indices in the split (default: {' '.join(map(str, indices))})")
    if images:
        src.add_argument("--images", nargs="+", help="image files instead of data set images")


# ------------------------------------------------------------------------------ image files
def rebuild_data(dm_hparams: dict[str, Any], image_size: int) -> Any:
    """:func:`zflight.checkpoint.rebuild_datamodule`, or ``None`` when it cannot be rebuilt.

    Image files need the data module only for its evaluation transform, normalization and class
    names, so an image folder that is gone is not an error here.

    Args:
        dm_hparams: the checkpoint's data-module hyperparameters, as :func:`read_ckpt` returns them
            (``_class_path`` included).
        image_size: the model's image size.

    Example:
        >>> module, dm_hp = read_ckpt("last.ckpt")  # doctest: +SKIP
        >>> dm = rebuild_data(dm_hp, module.hparams["image_size"])  # doctest: +SKIP
    """
    from zflight.checkpoint import rebuild_datamodule

    try:
        return rebuild_datamodule(dm_hparams, int(image_size))
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return None


def data_classes(datamodule: Any) -> list[str] | None:
    """The data module's class names in label order, or ``None`` when it has none."""
    try:
        names = getattr(datamodule, "classes", None)
    except (OSError, RuntimeError):
        return None
    return list(names) if names is not None else None


def data_mean_std(datamodule: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data module's normalization ``(mean, std)``; ImageNet's when it has none."""
    from zflight.data import IMAGENET_MEAN, IMAGENET_STD

    mean = getattr(datamodule, "mean", None)
    std = getattr(datamodule, "std", None)
    if mean is None or std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(mean), tuple(std)


def display_images(images: torch.Tensor, datamodule: Any, dataset: Any = None) -> torch.Tensor:
    """Undo the normalization of ``images`` for display, in [0, 1].

    ``dataset.denormalize`` when the data set has it, else the data module's mean and std.
    """
    if dataset is not None and hasattr(dataset, "denormalize"):
        return dataset.denormalize(images)
    mean, std = data_mean_std(datamodule)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def load_image_files(
    files: Sequence[str | os.PathLike], datamodule: Any, image_size: int, flag: str = "--images"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read image files as the model's input: ``(images, display images, names)``.

    Each file is converted to RGB and passed through the data module's ``eval_transform()``
    when it has one, else resized to ``image_size`` x ``image_size`` and normalized with
    :func:`data_mean_std`. ``names`` are ``"<k>_<file stem>"``, safe as file names.

    Args:
        files: the image files.
        datamodule: the checkpoint's data module (:func:`rebuild_data`), or ``None``.
        image_size: the model's image size.
        flag: the option named in error messages.

    Returns:
        ``[N, 3, H, W]`` in the model's input space, the same in [0, 1] for display, the names.

    Raises:
        AnalysisError: a file is missing or cannot be read as an image (the message names it).

    Example:
        >>> x, shown, names = load_image_files(["cat.png"], None, 64)  # doctest: +SKIP
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms as T

    mean, std = data_mean_std(datamodule)
    if datamodule is not None and hasattr(datamodule, "eval_transform"):
        transform = datamodule.eval_transform()
    else:
        transform = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])
    tensors, names = [], []
    for k, f in enumerate(files):
        path = Path(f)
        if not path.is_file():
            raise AnalysisError(f"{flag}: no such file: {path}")
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise AnalysisError(f"{flag}: cannot read image file {path}: {type(err).__name__}: {err}") from None
        tensors.append(transform(rgb))
        names.append(f"{k}_{safe_name(path.stem)}")
    images = torch.stack(tensors)
    return images, display_images(images, datamodule), names


def class_indices(
    values: Sequence[str], n: int, class_names: Sequence[str] | None, flag: str = "--targets"
) -> list[int]:
    """Turn one class per image file, a name or a number, into class indices.

    Numbers are not checked against the number of classes here (the analysis does that).

    Raises:
        AnalysisError: not one value per file, or a value that is neither a known class name
            nor a number (the message names ``flag`` and lists the classes).

    Example:
        >>> class_indices(["ring", "3"], 2, ["disk", "ring"])
        [1, 3]
    """
    if len(values) != n:
        raise AnalysisError(f"{flag}: one per --images file ({n}), got {len(values)}")
    out = []
    for t in values:
        if class_names is not None and t in class_names:
            out.append(list(class_names).index(t))
        elif t.lstrip("-").isdigit():
            out.append(int(t))
        else:
            known = f" (classes: {', '.join(class_names)})" if class_names else ""
            raise AnalysisError(f"{flag}: unknown class {t!r}{known}")
    return out


def safe_name(stem: str) -> str:
    """``stem`` with anything but letters, digits, ``-`` and ``_`` replaced, at most 40 characters."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:40] or "image"


# ---------------------------------------------------------------------- any model, any images
def source_arguments(parser: argparse.ArgumentParser, *, images: str | None = "folder",
                     ckpt_help: str | None = None, class_names: bool = True) -> None:
    """Add the options that name a model (exactly one of ``--ckpt_path``, ``--model``) and images.

    Model: ``--ckpt_path`` (a zflight checkpoint) or ``--model`` (a torchvision name,
    ``timm:NAME`` or ``package.module:attr``) with ``--weights``, ``--checkpoint`` and
    ``--model_args``. Images (unless ``images`` is ``None``): ``--images`` (a folder; with
    ``images="files"`` also image files), and the preprocessing options ``--resize``,
    ``--image_size``, ``--mean``, ``--std``, plus ``--classes`` (unless ``class_names`` is false:
    a subcommand that uses no class names and has a ``--classes`` of its own). See
    :func:`load_sources`.
    """
    group = parser.add_argument_group("the model (exactly one of --ckpt_path and --model)")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt_path", help=ckpt_help or "a checkpoint written by `python -m zflight fit`")
    which.add_argument("--model", help="a torchvision model name (resnet18), timm:NAME, or package.module:attr "
                                       "(a class or function of your code)")
    group.add_argument("--weights", default=None,
                       help="torchvision: DEFAULT, IMAGENET1K_V1 or ResNet50_Weights.IMAGENET1K_V1; timm: "
                            "pretrained (default: random weights, or --checkpoint's)")
    group.add_argument("--checkpoint", default=None,
                       help="weights for --model: a state_dict, {'state_dict': ...}, a Lightning .ckpt or "
                            "a .safetensors file (read without running pickled code)")
    group.add_argument("--model_args", default=None,
                       help="keyword arguments for --model's builder, as a JSON object: '{\"num_classes\": 10}'")
    if class_names:
        group.add_argument("--classes", default=None,
                           help="a file of class names, one per line, in the model's output order")
    if images is None:
        return
    pics = parser.add_argument_group("the images (default: those of --ckpt_path's data set)")
    if images == "files":
        pics.add_argument("--images", nargs="+", default=None,
                          help="a folder of images (class subfolders or flat) or image files")
    else:
        pics.add_argument("--images", default=None,
                          help="a folder of jpg/png/webp/bmp/tif images: class subfolders (labels) or flat")
    pics.add_argument("--resize", type=int, default=None,
                      help="shorter side in pixels (default: the weights', the checkpoint's, or 256)")
    pics.add_argument("--image_size", type=int, default=None,
                      help="centre crop in pixels (default: the weights', the checkpoint's, or 224)")
    pics.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                      help="normalization mean (default: the weights', the checkpoint's, or ImageNet's)")
    pics.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                      help="normalization std (default: the weights', the checkpoint's, or ImageNet's)")


def load_sources(args: argparse.Namespace, *, split: str = "val", images: bool = True,
                 quiet: bool = False) -> tuple[Any, Any, str]:
    """The model and images that :func:`source_arguments`' options name.

    Returns:
        ``(ModelSource, dataset or None, a line saying where the images come from)``. The
        dataset is ``--images`` (a folder, read lazily through the model's preprocessing), else
        the data set of ``--ckpt_path``'s checkpoint (``split``); ``None`` when ``images`` is
        false.

    Raises:
        AnalysisError: one line naming the option (a bad model, weights file, image folder...).
    """
    from zflight.sources import default_dataset, image_files, load_model

    preprocess = {"resize": getattr(args, "resize", None), "crop": getattr(args, "image_size", None),
                  "mean": getattr(args, "mean", None), "std": getattr(args, "std", None)}
    try:
        source = load_model(args.model, ckpt_path=args.ckpt_path, weights=args.weights,
                            checkpoint=args.checkpoint, model_args=args.model_args,
                            classes=getattr(args, "classes", None),
                            preprocess=preprocess)
    except (ValueError, FileNotFoundError) as err:
        raise AnalysisError(_flag_of(str(err))) from None
    dataset, line = None, ""
    if images:
        given = getattr(args, "images", None)
        try:
            if given:
                paths = [given] if isinstance(given, str) else list(given)
                dataset = image_files(paths, source.preprocess)
                line = f"{len(dataset)} images from {', '.join(paths)}" + (
                    f" ({len(dataset.classes)} classes)" if dataset.classes else " (no classes)")
                dataset[0]  # an unreadable first file fails now, before any work
            else:
                dataset = default_dataset(source, split)
                line = f"the {split} split of the checkpoint's data ({len(dataset)} images)"
        except (ValueError, FileNotFoundError) as err:
            raise AnalysisError(_flag_of(str(err))) from None
    if not quiet and process_rank() == 0:
        for key, value in source.facts().items():
            print(f"{key}: {value}", flush=True)
        if line:
            print(f"images: {line}", flush=True)
    return source, dataset, line


def layers_or_default(given: Sequence[str] | None, source: Any, *, quiet: bool = False) -> list[str]:
    """``--layers``, checked against the model (close names, and how to list them), or the default rule.

    Raises:
        AnalysisError: an unknown or ambiguous layer; no default layer found.
    """
    from zflight.attribution import resolve_layer

    layers = list(given) if given else list(source.default_layers)
    if not layers:
        raise AnalysisError(f"--layers: no layer of {source.name} outputs feature maps; name them with --layers")
    for name in layers:
        try:
            resolve_layer(source.model, name)
        except ValueError as err:
            how = (f"python -m zflight layers --model {source.name}" if source.kind != "zflight"
                   else f"python -m zflight layers --ckpt_path {source.name}")
            raise AnalysisError(f"--layers: {err}; list them with: {how}") from None
    if len(set(layers)) != len(layers):
        raise AnalysisError(f"--layers: a layer is named twice: {' '.join(layers)}")
    if not given and not quiet and process_rank() == 0:
        print(f"layers: {' '.join(layers)} (the default: each resolution stage's output; name others with --layers)",
              flush=True)
    return layers


def paper_or_stage_layers(given: Sequence[str] | None, source: Any, *, paper: Sequence[str], paper_why: str,
                          pick: Callable[[list[str]], list[str]], pick_why: str) -> list[str]:
    """``--layers`` (checked); else ``paper`` when the model has them all (zflight's networks); else
    ``pick`` of the model's default layers (each resolution stage's output). The choice is printed.

    Raises:
        AnalysisError: see :func:`layers_or_default`.
    """
    from zflight.attribution import resolve_layer

    if given:
        return layers_or_default(given, source)
    try:
        for name in paper:
            resolve_layer(source.model, name)
        layers, why = list(paper), paper_why
    except ValueError:
        layers, why = pick(layers_or_default(None, source, quiet=True)), pick_why
    if process_rank() == 0:
        print(f"layers: {' '.join(layers)} ({why}; name others with --layers)", flush=True)
    return layers


def _flag_of(message: str) -> str:
    """``model: ...`` (the Python argument of :mod:`zflight.sources`) -> ``--model: ...``."""
    if re.match(r"(model_args|model|weights|checkpoint|ckpt_path|classes|images|resize|image_size|mean|std)\b",
                message):
        return "--" + message
    return message
