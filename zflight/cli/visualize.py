"""``python -m zflight visualize``: the paper's Fig. 2 panels for a trained checkpoint, as PNGs.

Usage::

    python -m zflight visualize --config configs/quickstart.yaml \\
        --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --out figures/quickstart \\
        [--layers conv1 conv2 conv3 conv4 conv5] [--k 9] [--maps 8] [--split val] \\
        [--max_images N] [--seed 0] [--dissection DIR/dissection.json] [--overwrite]

The data module comes from the config's ``data`` section (the one ``fit`` used), the network
from the checkpoint: ``ImageClassifier`` rebuilt from ``checkpoint["hyper_parameters"]`` and
its weights loaded (``torch.load(..., weights_only=True)``: nothing in the file is executed).
No training happens.

Written into ``--out``: ``top<k>_<layer>.png`` per layer (for ``maps`` random feature maps,
chosen with ``seed`` exactly as :class:`~zflight.callbacks.TopActivationPanels` chooses them,
the ``k`` strongest activations over the split, projected beside their patches),
``filters_conv1.png`` when the network has a colour first layer named ``conv1``, and
``top_activations.json`` (which maps, images, positions and values are shown). With
``--dissection`` (the ``dissection.json`` that ``python -m zflight dissect`` writes), each map's
caption carries its unit's label and IoU (``conv5 unit 12 · object/ring 0.21``). Everything is
written into a temporary folder next to ``--out`` and renamed to ``--out`` once complete, so a
failed run never leaves a folder that looks like a result. Bad input ends with one ``error:``
line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    default_device,
    layers_or_default,
    load_sources,
    output_dir,
    run_cli,
    safe_name,
    source_arguments,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the ``visualize`` subcommand.

    Args:
        argv: the arguments after ``visualize`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The output folder.

    Raises:
        SystemExit: status 2 with one ``error:`` line on bad input.

    Example:
        >>> main(["--config", "configs/quickstart.yaml", "--ckpt_path", "last.ckpt",
        ...       "--out", "panels"])  # doctest: +SKIP
        PosixPath('panels')
    """
    return run_cli(_parser(), argv, _run)


def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "visualize",
        "Write the paper's Fig. 2 panels (top activations projected beside their image "
        "patches) for layers of a trained checkpoint, without training.",
    )
    source_arguments(p)
    p.add_argument("--config", default=None,
                   help="with --ckpt_path: the config used to train, whose data section gives the images "
                        "(default: the checkpoint's own data section)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layer names (default: conv1 … conv5 for zflight's networks, else each resolution "
                        "stage's output; `python -m zflight layers` lists them)")
    p.add_argument("--k", type=int, default=9, help="activations per feature map (default 9)")
    p.add_argument("--maps", type=int, default=8, help="random feature maps per layer (default 8)")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="split of the checkpoint's data mined (default val; --images is mined whole)")
    p.add_argument("--max_images", type=int, default=None, help="mine a fixed random subset of this many images")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--num_workers", type=int, default=0,
                   help="DataLoader worker processes decoding the images (default 0)")
    p.add_argument("--tile", type=int, default=48, help="side of each tile in pixels (default 48)")
    p.add_argument("--maps_per_row", type=int, default=4, help="feature-map cells per panel row (default 4)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dissection", default=None,
                   help="a dissection.json (python -m zflight dissect): caption each unit with its label and IoU")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def _run(args: argparse.Namespace) -> Path:
    from zflight.analysis import top_activation_crops, top_activations
    from zflight.callbacks._common import _choose_maps, _layer_channels, _SeededItems, _subset
    from zflight.figures import filter_grid, save_png, top_activation_panel
    from zflight.figures.dissection import unit_caption

    for name in ("k", "maps", "batch_size", "tile", "maps_per_row"):
        if getattr(args, name) < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_images is not None and args.max_images < 1:
        raise AnalysisError(f"--max_images must be >= 1, got {args.max_images}")
    out = check_out(args.out, args.overwrite)
    device = default_device(args.device)
    labels = _read_dissection(args.dissection)
    if args.config is not None and args.ckpt_path is None:
        raise AnalysisError("--config goes with --ckpt_path (its data section names the checkpoint's images)")

    source, dataset, line = load_sources(args, split=args.split, images=args.config is None or bool(args.images))
    if args.config is not None and not args.images:
        dataset = _load_dataset(Path(args.config), args.split)
        line = f"the {args.split} split of {args.config}'s data section"
    layers = layers_or_default(args.layers, source)
    model = source.model.to(device).eval()
    # Same subset and same torch seeds per item as the TopActivationPanels callback (this
    # process does nothing else with the RNG, so it needs no restoring).
    dataset = _SeededItems(_subset(dataset, args.max_images, args.seed), args.seed)

    with output_dir(out, overwrite=args.overwrite) as tmp:
        report: dict[str, Any] = {
            "ckpt_path": None if args.ckpt_path is None else str(args.ckpt_path),
            "config": None if args.config is None else str(args.config),
            "model": source.facts(), "images_from": line, "split": args.split,
            "images": len(dataset), "k": args.k, "seed": args.seed, "layers": {},
        }
        channels = {
            name: _choose_maps(args.maps, name, _layer_channels(model, name, dataset), args.seed)
            for name in layers
        }
        _check_labels(labels, model, channels)
        # One pass over the data for all layers (under torchrun, each rank mines its shard).
        tops = top_activations(model, dataset, layers, k=args.k, channels=channels,
                               batch_size=args.batch_size, num_workers=args.num_workers, progress=True)
        for name in layers:
            top = tops[name]
            # Under torchrun each rank projects its share of the batches; all get every tile.
            projections, patches = top_activation_crops(model, dataset, top, tile=args.tile,
                                                        batch_size=args.batch_size, shard=True)
            panel = top_activation_panel(
                projections, patches, maps_per_row=args.maps_per_row,
                captions=[unit_caption(name, c, labels) for c in top.channels.tolist()],
                title=f"top-{args.k} of {name}",
            )
            save_png(panel, tmp / f"top{args.k}_{name}.png")
            report["layers"][name] = {
                "module": top.layer,
                "channels": top.channels.tolist(),
                "indices": top.indices.tolist(),
                "positions": top.positions.tolist(),
                "values": top.values.tolist(),
            }
        first = _first_conv(model)
        if first is not None:
            name, conv = first
            tag = "conv1" if name.endswith("conv1") else safe_name(name)
            save_png(filter_grid(conv.weight.detach().float().cpu()), tmp / f"filters_{tag}.png")
        write_json(report, tmp / "top_activations.json")
    print(f"zflight visualize: wrote {len(layers)} panels to {out}", flush=True)
    return out


def _read_dissection(path: str | None) -> Any:
    """The :class:`~zflight.analysis.Dissection` in ``path`` (``None`` without ``--dissection``).

    Reads what ``python -m zflight dissect`` writes (``Dissection.to_json()`` plus a summary),
    or a document holding it under ``"dissection"``.
    """
    if path is None:
        return None
    import json

    from zflight.analysis.dissection import Dissection

    try:
        with open(path) as f:
            doc = json.load(f)
        return Dissection.from_json(doc.get("dissection", doc) if isinstance(doc, dict) else doc)
    except FileNotFoundError:
        raise AnalysisError(f"--dissection: {path} does not exist") from None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise AnalysisError(f"--dissection: {path} is not a dissection.json ({err})") from None


def _check_labels(labels: Any, model: torch.nn.Module, channels: dict[str, list[int]]) -> None:
    """A dissection of another network (a layer with fewer units) is an error, not wrong labels."""
    if labels is None:
        return
    from zflight.attribution import resolve_layer

    for name, chans in channels.items():
        try:
            ld = labels._layer(name)
        except ValueError:
            try:
                ld = labels._layer(resolve_layer(model, name)[0])
            except ValueError:
                continue  # not dissected: plain captions for this layer
        if max(chans) >= ld.num_units:
            raise AnalysisError(
                f"--dissection: its layer {name} has {ld.num_units} units, but the checkpoint's has "
                f"unit {max(chans)}: the dissection is of another network"
            )


def _first_conv(model: torch.nn.Module) -> tuple[str, torch.nn.Conv2d] | None:
    """The first convolution that reads colour (or grey) pixels: the filters worth drawing."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.shape[1] in (1, 3) and module.groups == 1:
            return name, module
    return None


def _load_dataset(config: Path, split: str) -> Any:
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    if not config.is_file():
        raise AnalysisError(f"--config {config} does not exist")
    with open(config) as f:
        cfg = yaml.safe_load(f) or {}
    data = cfg.get("data") or {}
    if "class_path" not in data:
        # As in `fit`: the embedded data module is the default; init args may stand alone.
        data = {"class_path": "zflight.data.ShapesDataModule", "init_args": data.get("init_args", data)}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        namespace = parser.parse_object({"data": data})
        # jsonargparse >= 4.49 renamed instantiate_classes to instantiate.
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        datamodule = instantiate(namespace).data
    except Exception as err:
        raise AnalysisError(f"--config {config}: the data section cannot be built: {err}") from None
    datamodule.setup("fit" if split == "train" else "validate")
    dataset = getattr(datamodule, f"{split}_dataset", None)
    if dataset is None:
        loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
        dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise AnalysisError(f"--config {config}: the data module has no {split} data set")
    return dataset
