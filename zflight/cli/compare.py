"""``python -m zflight compare``: the paper's Fig. 6 for two models, side by side, PNG + JSON.

For each model: its first conv layer's filters as an image grid (Fig. 6 (b), (c)), deconvnet
projections of its most active layer-2 feature maps over probe images (Fig. 6 (d), (e)), and the
numbers of :func:`~zflight.analysis.architecture.architecture_report`: dead filters, their
spectral power in low / mid / high bands, the power above the first conv stride's Nyquist
frequency, and the layer-2 shift-aliasing score (definitions in
:mod:`zflight.analysis.architecture` and ``docs/architecture.md``).

Usage (the paper's order: the Krizhevsky replication first, ZFNet second)::

    python -m zflight compare --ckpt_path runs/compare/alexnet_zf/version_0/checkpoints/last.ckpt \\
        --ckpt_path_b runs/compare/zfnet/version_0/checkpoints/last.ckpt --out out/compare
    python -m zflight compare --model resnet18 --weights DEFAULT --model_b vgg11 --weights_b DEFAULT \\
        --images photos/ --out out/compare

writes ``compare.png``, ``filters_a.png``, ``filters_b.png`` and ``compare.json``.

Model A is named as for every analysis subcommand (:func:`zflight.cli._common.source_arguments`:
``--ckpt_path``, or ``--model`` with ``--weights``, ``--checkpoint``, ``--model_args``), model B
by the same options with ``_b`` (``--ckpt_path_b``, or ``--model_b`` with ``--weights_b``,
``--checkpoint_b``, ``--model_args_b``). The preprocessing options (``--resize``,
``--image_size``, ``--mean``, ``--std``) apply to both.

The probe images: the first ``--num_images`` (default 256) of each zflight checkpoint's own data
(``--split``); or ``--images``: image files (every one is a probe image) or a folder
(``--num_images`` of its images spread evenly over it, default 256 at most). Each model reads
them through its own preprocessing.

The layers, per model (``--filter_layer``, ``--activity_layer``, ``--feature_layer`` name others:
one name for both models, or two, A's then B's):

- zflight's networks (modules ``conv1``, ``relu1``, ``relu2``): the filters of ``conv1``, the
  channels of ``relu1`` checked for activity, the layer-2 features ``relu2``, as in the paper;
- any other model: the filters of its first ``Conv2d`` (in the order the modules are defined),
  activity at its first default layer and layer-2 features at its second
  (:func:`zflight.sources.default_layers`, each resolution stage's output: ResNet ``relu`` and
  ``layer1``; VGG the ReLUs before its first two pools).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid

from zflight.analysis.architecture import (
    ArchitectureReport,
    architecture_report,
    layer_projections,
)
from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    default_device,
    load_sources,
    output_dir,
    run_cli,
    source_arguments,
    subcommand_parser,
    write_json,
)
from zflight.figures import save_figure

__all__ = ["compare_figure", "compare_models", "main"]


def compare_models(
    models: dict[str, torch.nn.Module],
    images: dict[str, torch.Tensor],
    *,
    filter_layer: str | Mapping[str, str] = "conv1",
    activity_layer: str | Mapping[str, str] = "relu1",
    feature_layer: str | Mapping[str, str] = "relu2",
    maps: int = 16,
    max_shift: int = 8,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """Return, per model, its :class:`ArchitectureReport`, layer-1 filters and layer-2 projections.

    Args:
        models: display name → network.
        images: display name → ``[N, 3, H, W]`` probe images for that network.
        filter_layer: the first conv layer: one name for every model, or display name → name.
        activity_layer: the layer checked for never-active channels (likewise).
        feature_layer: the layer-2 layer, projections and shift aliasing (likewise).
        maps: layer-2 feature maps projected per model.
        max_shift: see :func:`~zflight.analysis.architecture.shift_aliasing`.
        batch_size: images per forward pass.

    Returns:
        name → ``{"report", "weight", "projections", "channels", "images"}``.

    Example:
        >>> out = compare_models({"alexnet_zf": a, "zfnet": b}, {"alexnet_zf": x, "zfnet": x})  # doctest: +SKIP
    """
    def of(layer: str | Mapping[str, str], name: str) -> str:
        return layer if isinstance(layer, str) else layer[name]

    result = {}
    for name, model in models.items():
        report = architecture_report(model, images[name], filter_layer=of(filter_layer, name),
                                     activity_layer=of(activity_layer, name),
                                     feature_layer=of(feature_layer, name),
                                     max_shift=max_shift, batch_size=batch_size)
        weight = dict(model.named_modules())[report.filter_layer].weight.detach().cpu()
        proj, channels, picks = layer_projections(model, images[name], of(feature_layer, name), maps=maps,
                                                  batch_size=batch_size)
        result[name] = {"report": report, "weight": weight, "projections": proj,
                        "channels": channels, "images": picks}
    return result


def compare_figure(results: dict[str, dict[str, Any]]) -> Any:
    """Return a matplotlib ``Figure``: one column per model (filters, layer-2 projections, bands).

    Args:
        results: the output of :func:`compare_models`.

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas.

    Example:
        >>> save_figure(compare_figure(compare_models(models, images)), "compare.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zflight.figures import filter_grid, normalize_projection

    names = list(results)
    fig = Figure(figsize=(5.2 * len(names), 11.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(3, len(names), squeeze=False, height_ratios=[1.0, 1.0, 0.6]))
    for col, name in enumerate(names):
        r = results[name]
        report: ArchitectureReport = r["report"]
        grid = filter_grid(r["weight"])
        ax = axes[0, col]
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(
            f"{name}: layer-1 filters ({report.filter_layer.rsplit('.', 1)[-1]}, stride {report.stride})\n"
            f"dead {report.dead_share:.0%}, power above stride Nyquist {report.stride_aliasing:.2f}",
            fontsize=9,
        )
        proj = normalize_projection(r["projections"])
        nrow = int(np.ceil(np.sqrt(proj.shape[0])))
        ax = axes[1, col]
        ax.imshow(make_grid(proj, nrow=nrow, padding=2, pad_value=1.0).permute(1, 2, 0).numpy(),
                  interpolation="nearest")
        shift = report.shift_aliasing["score"] if report.shift_aliasing else float("nan")
        ax.set_title(f"{name}: {report.feature_layer.rsplit('.', 1)[-1]} projections "
                     f"(top map activations)\nshift aliasing {shift:.3f}", fontsize=9)
        for ax in axes[:2, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    ax = axes[2, 0]
    bands = ["low", "mid", "high"]
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        b = results[name]["report"].bands
        ax.bar(np.arange(3) + (k - (len(names) - 1) / 2) * width, [b[x] for x in bands], width,
               label=name, color=f"C{k}")
    ax.set_xticks(range(3), [f"{b}" for b in bands])
    ax.set_ylabel("share of layer-1 filter power", fontsize=8)
    ax.set_title("spatial frequency bands (mean over live filters)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax = axes[2, -1] if len(names) > 1 else None
    if ax is not None:
        rows = [
            ("dead layer-1 filters", lambda rep: f"{rep.dead_share:.1%}"),
            ("never-active channels", lambda rep: "–" if rep.inactive_share is None else f"{rep.inactive_share:.1%}"),
            ("low / mid / high", lambda rep: " / ".join(f"{rep.bands[b]:.2f}" for b in bands)),
            ("power above stride Nyquist", lambda rep: f"{rep.stride_aliasing:.3f}"),
            ("layer-2 shift aliasing", lambda rep: "–" if not rep.shift_aliasing else f"{rep.shift_aliasing['score']:.4f}"),
        ]
        cells = [[fmt(results[n]["report"]) for n in names] for _, fmt in rows]
        ax.axis("off")
        table = ax.table(cellText=cells, rowLabels=[r for r, _ in rows], colLabels=names, loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1.0, 1.4)
        for extra in axes[2, 1:-1]:
            extra.axis("off")
    return fig


# zflight's networks: the paper's layer-1 filters, layer-1 activity and layer-2 features.
_PAPER_LAYERS = {"filter_layer": "conv1", "activity_layer": "relu1", "feature_layer": "relu2"}
_DEFAULT_IMAGES = 256
_B_OPTIONS = ("ckpt_path", "model_args", "model", "weights", "checkpoint")


def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "compare",
        "Architecture selection (Fig. 6): first-layer filters, layer-2 projections and their numbers for two models.",
    )
    source_arguments(p, images="files", class_names=False,
                     ckpt_help="model A: a checkpoint written by `python -m zflight fit` (the paper: the Krizhevsky "
                               "replication)")
    b = p.add_argument_group("model B (exactly one of --ckpt_path_b and --model_b)")
    which = b.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt_path_b", help="the second checkpoint (the paper: ZFNet)")
    which.add_argument("--model_b", help="the second model, named as --model")
    b.add_argument("--weights_b", default=None, help="--weights of model B")
    b.add_argument("--checkpoint_b", default=None, help="--checkpoint of model B")
    b.add_argument("--model_args_b", default=None, help="--model_args of model B")
    p.add_argument("--out", required=True, help="output folder (written whole, or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of the checkpoints' data sets the probe images come from (default: val)")
    p.add_argument("--names", nargs=2, default=None,
                   help="display names of the two models (default: their arch or model name)")
    p.add_argument("--num_images", type=int, default=None,
                   help=f"probe images: the first ones of the split, or spread over an --images folder "
                        f"(default: {_DEFAULT_IMAGES}; not with --images files)")
    p.add_argument("--maps", type=int, default=16, help="layer-2 feature maps projected per model")
    layer_help = {
        "filter_layer": "the conv layer whose filters are shown (default: conv1 in zflight's networks, else the "
                        "first Conv2d)",
        "activity_layer": "the layer whose channels are checked for activity (default: relu1 in zflight's "
                          "networks, else the first default layer)",
        "feature_layer": "the layer-2 layer projected and scored for shift aliasing (default: relu2 in zflight's "
                         "networks, else the second default layer)",
    }
    for option, what in layer_help.items():
        p.add_argument(f"--{option}", nargs="+", default=None, metavar="NAME",
                       help=f"{what}; one name for both models, or two (A's, then B's)")
    p.add_argument("--max_shift", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``python -m zflight compare``; returns the output folder.

    Args:
        argv: the arguments after ``compare``.

    Returns:
        The output folder, holding ``compare.png``, ``filters_a.png``, ``filters_b.png`` and
        ``compare.json``.

    Example:
        >>> main(["--ckpt_path", "a.ckpt", "--ckpt_path_b", "b.ckpt", "--out", "out/compare"])  # doctest: +SKIP
    """
    return run_cli(_parser(), argv, _run)


def _run(args: argparse.Namespace) -> Path:
    from zflight.figures import filter_grid, save_png

    files = args.images is not None and not (len(args.images) == 1 and Path(args.images[0]).is_dir())
    if files and args.num_images is not None:
        raise AnalysisError("--num_images goes with data set images or an --images folder; with --images files "
                            "every file is a probe image")
    check_out(args.out, args.overwrite)
    if args.num_images is not None and args.num_images < 1:
        raise AnalysisError(f"--num_images must be >= 1, got {args.num_images}")
    if args.maps < 1:
        raise AnalysisError(f"--maps must be >= 1, got {args.maps}")
    for option in _PAPER_LAYERS:
        given = getattr(args, option)
        if given is not None and len(given) > 2:
            raise AnalysisError(f"--{option}: one name for both models, or two (A's, then B's); got {len(given)}")
    device = default_device(args.device)
    sources, datasets = [], []
    for which in ("a", "b"):
        source, dataset = _load(args, which)
        sources.append(source)
        datasets.append(dataset)
    names = list(args.names) if args.names else [_display_name(s) for s in sources]
    if names[0] == names[1]:
        names = [f"{names[0]} (a)", f"{names[1]} (b)"]
    models, images, records, layers = {}, {}, {}, {}
    for k, (name, source, dataset) in enumerate(zip(names, sources, datasets)):
        layers[name] = _layers(args, source, k)
        indices = _probe_indices(dataset, args, files)  # the same for both: one folder, one order
        images[name] = torch.stack([dataset[i][0] for i in indices])
        try:
            models[name] = source.model.to(device)
        except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
            raise AnalysisError(f"--device: cannot use {device}: {err}".splitlines()[0]) from None
        records[name] = {"arch": source.hparams.get("arch"), "model": source.facts(),
                         "num_probe_images": len(indices), "layers": layers[name]}
        print(f"{'AB'[k]} = {name}: layers {layers[name]['filter_layer']} (filters), {layers[name]['activity_layer']} "
              f"(activity), {layers[name]['feature_layer']} (layer-2 features)", flush=True)
    results = compare_models(models, images, maps=args.maps, max_shift=args.max_shift, batch_size=args.batch_size,
                             **{option: {n: layers[n][option] for n in names} for option in _PAPER_LAYERS})
    fig = compare_figure(results)
    source = ({"split": args.split} if args.images is None
              else {"images": [str(datasets[0].files[i]) for i in indices]})
    record = {
        **source,
        "models": {
            name: {
                "ckpt_path": str(path) if path is not None else None,
                **records[name],
                **results[name]["report"].to_dict(),
                "projected_channels": results[name]["channels"],
                "projected_from_images": results[name]["images"],
            }
            for name, path in zip(names, (args.ckpt_path, args.ckpt_path_b))
        },
    }
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_figure(fig, tmp / "compare.png")
        for suffix, name in zip("ab", names):
            save_png(filter_grid(results[name]["weight"]), tmp / f"filters_{suffix}.png")
        write_json(record, tmp / "compare.json")
    for name in names:
        rep = results[name]["report"]
        shift = rep.shift_aliasing["score"] if rep.shift_aliasing else float("nan")
        print(f"{name}: dead {rep.dead_share:.1%}, bands low/mid/high "
              f"{rep.bands['low']:.2f}/{rep.bands['mid']:.2f}/{rep.bands['high']:.2f}, "
              f"above stride Nyquist {rep.stride_aliasing:.3f}, layer-2 shift aliasing {shift:.4f}")
    print(f"zflight compare: wrote {Path(args.out) / 'compare.png'} and compare.json")
    return Path(args.out)


def _load(args: argparse.Namespace, which: str) -> tuple[Any, Any]:
    """Model ``which`` (``"a"``, or ``"b"`` from the ``_b`` options) and its probe images, its
    facts printed with its letter; errors name the option the user typed (``--ckpt_path_b``)."""
    names = vars(args).copy()
    if which == "b":
        names.update({option: getattr(args, f"{option}_b") for option in _B_OPTIONS})
    try:
        source, dataset, line = load_sources(argparse.Namespace(**names), split=args.split, quiet=True)
    except AnalysisError as err:
        if which == "a":
            raise
        raise AnalysisError(re.sub(rf"^--({'|'.join(_B_OPTIONS)})\b", r"--\1_b", str(err))) from None
    for key, value in source.facts().items():
        print(f"{which.upper()} {key}: {value}", flush=True)
    print(f"{which.upper()} images: {line}", flush=True)
    return source, dataset


def _display_name(source: Any) -> str:
    return str(source.hparams.get("arch") or "model") if source.kind == "zflight" else source.name


def _probe_indices(dataset: Any, args: argparse.Namespace, files: bool) -> list[int]:
    """Every image file; the first ``--num_images`` of a checkpoint's data; or as many spread
    evenly over an --images folder (sorted by class: its first ones would be one class)."""
    total = len(dataset)
    if files:
        return list(range(total))
    n = min(args.num_images if args.num_images is not None else _DEFAULT_IMAGES, total)
    if args.images is None:
        return list(range(n))
    return [k * total // n for k in range(n)]


def _layers(args: argparse.Namespace, source: Any, k: int) -> dict[str, str]:
    """The filter, activity and feature layers of model ``k`` (0: A, 1: B): given, or by the rule
    in the module docstring; each checked, an error naming its option."""
    from zflight.attribution import resolve_layer

    paper = True
    try:
        for name in _PAPER_LAYERS.values():
            resolve_layer(source.model, name)
    except ValueError:
        paper = False
    stages = source.default_layers
    defaults = dict(_PAPER_LAYERS) if paper else {
        "filter_layer": next((n for n, m in source.model.named_modules() if isinstance(m, torch.nn.Conv2d)), ""),
        "activity_layer": stages[0] if stages else "",
        "feature_layer": stages[1] if len(stages) > 1 else (stages[0] if stages else ""),
    }
    chosen = {}
    for option, default in defaults.items():
        given = getattr(args, option)
        name = given[min(k, len(given) - 1)] if given else default
        if not name:
            raise AnalysisError(f"--{option}: model {'AB'[k]} ({source.name}) has no such layer by default "
                                "(no Conv2d, or no layer with feature maps); name it")
        try:
            chosen[option] = resolve_layer(source.model, name)[0]
        except ValueError as err:
            how = f"--model {source.name}" if source.kind != "zflight" else f"--ckpt_path {source.name}"
            raise AnalysisError(f"--{option}: {err} (model {'AB'[k]}); list them with: python -m zflight layers "
                                f"{how}") from None
    return chosen
