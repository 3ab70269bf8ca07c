"""``python -m zflight compare``: the paper's Fig. 6 for two checkpoints, side by side, PNG + JSON.

For each model: its layer-1 filters as an image grid (Fig. 6 (b), (c)), deconvnet projections
of its most active layer-2 feature maps over probe images (Fig. 6 (d), (e)), and the numbers of
:func:`~zflight.analysis.architecture.architecture_report`: dead layer-1 filters, their
spectral power in low / mid / high bands, the power above the conv1 stride's Nyquist
frequency, and the layer-2 shift-aliasing score (definitions in
:mod:`zflight.analysis.architecture` and ``docs/architecture.md``).

Usage (the paper's order: the Krizhevsky replication first, ZFNet second)::

    python -m zflight compare --ckpt_path runs/compare/alexnet_zf/version_0/checkpoints/last.ckpt \\
        --ckpt_path_b runs/compare/zfnet/version_0/checkpoints/last.ckpt --out out/compare

writes ``compare.png``, ``filters_a.png``, ``filters_b.png`` and ``compare.json``. The probe
images are the first ``--num_images`` of the split of the embedded data set, or image files::

    python -m zflight compare --ckpt_path A.ckpt --ckpt_path_b B.ckpt --out out/compare \\
        --images a.png b.png c.png

each read for each model as :func:`~zflight.cli._common.load_image_files` reads them
(through that checkpoint's data-module evaluation transform, or resized to its image size).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid

from zflight.cli._common import (
    ArgumentParser,
    subcommand_parser,
    AnalysisError,
    check_out,
    common_arguments,
    embedded_dataset,
    load_image_files,
    load_network,
    output_dir,
    read_ckpt,
    rebuild_data,
    run_cli,
    write_json,
)
from zflight.analysis.architecture import ArchitectureReport, architecture_report, layer_projections
from zflight.figures import save_figure

__all__ = ["compare_figure", "compare_models", "main"]


def compare_models(
    models: dict[str, torch.nn.Module],
    images: dict[str, torch.Tensor],
    *,
    filter_layer: str = "conv1",
    activity_layer: str = "relu1",
    feature_layer: str = "relu2",
    maps: int = 16,
    max_shift: int = 8,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """Return, per model, its :class:`ArchitectureReport`, layer-1 filters and layer-2 projections.

    Args:
        models: display name → network.
        images: display name → ``[N, 3, H, W]`` probe images for that network.
        filter_layer: the first conv layer.
        activity_layer: the layer checked for never-active channels.
        feature_layer: the layer-2 layer (projections and shift aliasing).
        maps: layer-2 feature maps projected per model.
        max_shift: see :func:`~zflight.analysis.architecture.shift_aliasing`.
        batch_size: images per forward pass.

    Returns:
        name → ``{"report", "weight", "projections", "channels", "images"}``.

    Example:
        >>> out = compare_models({"alexnet_zf": a, "zfnet": b}, {"alexnet_zf": x, "zfnet": x})  # doctest: +SKIP
    """
    result = {}
    for name, model in models.items():
        report = architecture_report(model, images[name], filter_layer=filter_layer,
                                     activity_layer=activity_layer, feature_layer=feature_layer,
                                     max_shift=max_shift, batch_size=batch_size)
        weight = dict(model.named_modules())[report.filter_layer].weight.detach().cpu()
        proj, channels, picks = layer_projections(model, images[name], feature_layer, maps=maps,
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


def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "compare",
        "Architecture selection (Fig. 6): layer-1 filters, layer-2 projections and their numbers for two checkpoints.",
    )
    common_arguments(p, indices=None, images=True)
    p.add_argument("--ckpt_path_b", required=True, help="the second checkpoint (the paper: ZFNet)")
    p.add_argument("--names", nargs=2, default=None,
                   help="display names of the two models (default: their arch, e.g. alexnet_zf zfnet)")
    p.add_argument("--num_images", type=int, default=None,
                   help="probe images: the first ones of the split (default: 256; not with --images)")
    p.add_argument("--maps", type=int, default=16, help="layer-2 feature maps projected per model")
    p.add_argument("--filter_layer", default="conv1")
    p.add_argument("--activity_layer", default="relu1")
    p.add_argument("--feature_layer", default="relu2")
    p.add_argument("--max_shift", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
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

    if args.images is not None and args.num_images is not None:
        raise AnalysisError("--num_images goes with data set images; with --images every file is a probe image")
    check_out(args.out, args.overwrite)
    if args.num_images is None:
        args.num_images = 256
    if args.num_images < 1:
        raise AnalysisError(f"--num_images must be >= 1, got {args.num_images}")
    if args.maps < 1:
        raise AnalysisError(f"--maps must be >= 1, got {args.maps}")
    loaded = []
    for flag, path in (("--ckpt_path", args.ckpt_path), ("--ckpt_path_b", args.ckpt_path_b)):
        loaded.append(_load(path, flag, args.images))
    names = list(args.names) if args.names else [str(hp.get("arch", "model")) for _, hp, _ in loaded]
    if names[0] == names[1]:
        names = [f"{names[0]} (a)", f"{names[1]} (b)"]
    models, images, sources = {}, {}, {}
    for name, (model, hp, data_hp) in zip(names, loaded):
        if args.images is not None:
            # Each model reads the files as its own data module would (its size, its normalization).
            images[name], _, _ = load_image_files(args.images, data_hp, int(hp.get("image_size", 64)))
        else:
            dataset = embedded_dataset(hp, data_hp, args.split)
            n = min(args.num_images, len(dataset))
            images[name] = torch.stack([dataset[i][0] for i in range(n)])
        models[name] = model
        sources[name] = {"arch": hp.get("arch"), "num_probe_images": int(images[name].shape[0])}
    results = compare_models(models, images, filter_layer=args.filter_layer,
                             activity_layer=args.activity_layer, feature_layer=args.feature_layer,
                             maps=args.maps, max_shift=args.max_shift, batch_size=args.batch_size)
    fig = compare_figure(results)
    source = {"split": args.split} if args.images is None else {"images": [str(Path(f)) for f in args.images]}
    record = {
        **source,
        "models": {
            name: {
                "ckpt_path": str(path),
                **sources[name],
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


def _load(path: str, flag: str, files: Sequence[str] | None) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """The network, its hyperparameters and, per probe source, its data: the data-module
    hyperparameters (data set images) or the rebuilt data module (``--images``; may be ``None``)."""
    if files is None:
        return load_network(path, flag)
    module, dm_hparams = read_ckpt(path, flag)
    hparams = dict(module.hparams)
    return module.model.eval(), hparams, rebuild_data(dm_hparams, int(hparams.get("image_size", 64)))
