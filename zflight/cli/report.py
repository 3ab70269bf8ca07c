"""``python -m zflight report``: a unit explorer for a checkpoint, as one static folder.

Usage::

    python -m zflight report --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out report [--layers conv1 conv2 conv3 conv4 conv5] [--units N] [--images 4] \\
        [--log_dir runs/quickstart/version_0] [--dissection FILE.json] [--scores scores.json] \\
        [--dissect_images 500] [--k 9] [--tile 32] [--batch_size 100] [--overwrite]

Written into ``--out`` (all at once: a hidden folder beside it renamed at the end, so a failed
build leaves no half-written ``index.html``): ``index.html``, ``report.css``, ``report.js``,
``report.json`` (the numbers shown) and the pictures, every link relative. Open ``index.html``
with a double click: no server, no network.

What the page shows, and where each part comes from (the library functions the callbacks and
the other subcommands use; nothing is computed a second way):

- the overview: the network's layers (module, output size, parameters, receptive field) and the
  checkpoint's facts: epoch and step, the monitored metric as the ``ModelCheckpoint`` callback
  stored it, and the accuracy on the validation split computed now;
- per unit (the first ``--units`` channels of each layer, all by default), mined over the whole
  validation split of the checkpoint's embedded data set in one pass
  (:func:`~zflight.analysis.top_activations` with ``k`` = the split's size, so every image's
  strongest activation is known): the top-``k`` deconvnet projections beside their patches
  (:func:`~zflight.analysis.top_activation_crops`, Fig. 2), the histogram of its strongest
  activation per image, its Network Dissection label and IoU, and its feature evolution;
- per validation image (the first ``--images``): the occlusion maps of Fig. 7
  (:func:`~zflight.analysis.occlusion.occlusion_analysis`) and the explanation scores of every
  attribution method on it (:func:`~zflight.analysis.explanations.score_methods`).

Dissection labels: read from ``--dissection`` (a JSON of
:meth:`zflight.analysis.dissection.Dissection.to_json`, as ``python -m zflight dissect`` will
write it; a document holding it under ``"dissection"`` works too), else computed here with
:func:`~zflight.analysis.dissection.dissect` on the first ``--dissect_images`` validation images
(about 3 s per 200 images for the quickstart's 5 layers); ``--dissect_images 0`` skips it and
the page says "not computed". Explanation scores: per shown image, computed here (a few seconds
for 4 images); over a data set, read from ``--scores`` (the ``scores.json`` of
``python -m zflight evaluate``), else the page says "not computed".

Feature evolution: the checkpoint's own :class:`~zflight.callbacks.FeatureEvolution` state (the
raw projections of the units it tracked at each logged epoch); when the checkpoint has none, the
newest checkpoint under ``--log_dir/checkpoints``. ``--log_dir``'s ``figures/evolution_<layer>.png``
are copied beside each layer's strip; a log dir without them is a note at the top of the page.

Bad input ends with one ``error:`` line naming the option, exit status 2, before anything is
written: a missing checkpoint, an unknown layer (with close names), an ``--out`` that is a file,
``--units 0``, a missing ``--log_dir``, ``--dissection`` or ``--scores`` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zflight.callbacks.panels import PAPER_LAYERS
from zflight.cli._common import (
    AnalysisError,
    ArgumentParser,
    check_out,
    checkpoint_arguments,
    embedded_dataset,
    load_network,
    output_dir,
    run_cli,
    safe_name,
    subcommand_parser,
    write_json,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``python -m zflight report``.

    Args:
        argv: the arguments after ``report`` (``sys.argv[2:]`` when ``None``).

    Returns:
        The path of the written ``index.html``.

    Raises:
        SystemExit: status 2 and one ``error:`` line on bad input (nothing written to ``--out``).

    Example:
        >>> main(["--ckpt_path", "last.ckpt", "--out", "report", "--units", "8"])  # doctest: +SKIP
        PosixPath('report/index.html')
    """
    return run_cli(_parser(), argv, _run)


# ----------------------------------------------------------------------------------- internals
def _parser() -> ArgumentParser:
    p = subcommand_parser(
        "report",
        "Write a unit explorer: a static folder (index.html + pictures) with every unit's top-9, "
        "dissection label, feature evolution and activation histogram, and the occlusion maps "
        "and explanation scores of validation images. Opens from disk, no server.",
    )
    checkpoint_arguments(p)
    p.add_argument("--layers", nargs="+", default=list(PAPER_LAYERS),
                   help="layers (default: conv1 … conv5)")
    p.add_argument("--units", type=int, default=None,
                   help="units per layer: the first N channels (default: all)")
    p.add_argument("--images", type=int, default=4,
                   help="validation images with occlusion maps and scores: the first N (default 4; 0: none)")
    p.add_argument("--log_dir", default=None,
                   help="the training run's folder (runs/<name>/version_<n>): its evolution figures and checkpoints")
    p.add_argument("--dissection", default=None,
                   help="a dissection JSON (Dissection.to_json) to take the labels from instead of dissecting here")
    p.add_argument("--dissect_images", type=int, default=500,
                   help="validation images dissected here when no --dissection is given (default 500; 0: none)")
    p.add_argument("--scores", default=None,
                   help="scores.json of `python -m zflight evaluate`: the data-set-wide explanation scores")
    p.add_argument("--k", type=int, default=9, help="top activations shown per unit (default 9)")
    p.add_argument("--tile", type=int, default=32, help="side of each top-k tile in pixels (default 32)")
    p.add_argument("--batch_size", type=int, default=100, help="images per forward pass (default 100)")
    return p


def _run(args: argparse.Namespace) -> Path:
    from tqdm.auto import tqdm

    from zflight.attribution import resolve_layer
    from zflight.callbacks._common import _layer_channels
    from zflight.checkpoint import open_checkpoint
    from zflight.figures.report import write_site

    _check_numbers(args)
    out = check_out(args.out, args.overwrite)
    log_dir = _check_dir(args.log_dir, "--log_dir")
    dissection_doc = _read_json(args.dissection, "--dissection")
    scores_doc = _read_json(args.scores, "--scores")
    if scores_doc is not None and not isinstance(scores_doc.get("scores"), dict):
        raise AnalysisError(f"--scores: {args.scores} is not a scores.json of `python -m zflight evaluate` (no 'scores')")

    started = time.perf_counter()
    model, hparams, data_hp = load_network(args.ckpt_path)
    try:
        ckpt = open_checkpoint(args.ckpt_path, mmap=True)
        dataset = embedded_dataset(hparams, data_hp, "val")
    except (AnalysisError, ValueError) as err:
        raise AnalysisError(f"--ckpt_path: {err}") from None
    modules = {}
    for name in args.layers:
        try:
            modules[name] = resolve_layer(model, name)
        except ValueError as err:
            raise AnalysisError(f"--layers: {err}") from None
    if len(set(args.layers)) != len(args.layers):
        raise AnalysisError(f"--layers: a layer is named twice: {' '.join(args.layers)}")
    if args.images > len(dataset):
        raise AnalysisError(f"--images: {args.images} is more than the {len(dataset)} validation images")
    totals = {name: _layer_channels(model, name, dataset) for name in args.layers}
    channels = {name: list(range(min(args.units or total, total))) for name, total in totals.items()}
    n_units = sum(len(c) for c in channels.values())
    bar = _Progress(tqdm(total=4 + len(args.layers) + n_units + args.images, desc="report", unit="step"))
    try:
        with output_dir(out, overwrite=args.overwrite) as tmp:
            content = _build(args, tmp, model, hparams, ckpt, dataset, modules, totals, channels,
                             dissection_doc, scores_doc, log_dir, bar)
            bar.stage("page")
            document = content.to_json()
            write_site(content, tmp)
            bar.stage("done")
            document["build_seconds"] = {k: round(v, 2) for k, v in bar.seconds.items()}
            write_json(document, tmp / "report.json")
    finally:
        bar.close()
    index = out / "index.html"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in bar.seconds.items())
    images = f"{args.images} image{'' if args.images == 1 else 's'}"
    print(f"zflight report: {n_units} units, {images} in {time.perf_counter() - started:.1f} s "
          f"(seconds: {stages})", flush=True)
    print(f"open {index.resolve().as_uri()}", flush=True)
    return index


class _Progress:
    """The build's progress bar, and the seconds spent in each stage (in ``report.json``)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.seconds: dict[str, float] = {}
        self._stage: str | None = None
        self._since = time.perf_counter()

    def stage(self, name: str, detail: str | None = None) -> None:
        """Start stage ``name`` (time adds up per name); the bar shows ``detail`` or the name."""
        now = time.perf_counter()
        if self._stage is not None:
            self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + now - self._since
        self._stage, self._since = name, now
        self.bar.set_postfix_str(detail or name, refresh=False)

    def update(self) -> None:
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("units", "k", "tile", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name} must be >= 1, got {value}")
    for name in ("images", "dissect_images"):
        if getattr(args, name) < 0:
            raise AnalysisError(f"--{name} must be >= 0, got {getattr(args, name)}")


def _check_dir(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    folder = Path(path)
    if not folder.is_dir():
        raise AnalysisError(f"{flag}: no such folder: {folder}")
    return folder


def _read_json(path: str | None, flag: str) -> dict[str, Any] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise AnalysisError(f"{flag}: no such file: {file}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnalysisError(f"{flag}: {file} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"{flag}: {file} holds no JSON object")
    return data


def _build(
    args: argparse.Namespace, tmp: Path, model: torch.nn.Module, hparams: dict[str, Any],
    ckpt: dict[str, Any], dataset: Any, modules: dict[str, tuple[str, torch.nn.Module]],
    totals: dict[str, int], channels: dict[str, list[int]], dissection_doc: dict[str, Any] | None,
    scores_doc: dict[str, Any] | None, log_dir: Path | None, bar: _Progress,
) -> Any:
    """Run the analyses, draw the pictures into ``tmp``, and return the page's content."""
    from zflight.analysis import receptive_field, top_activation_crops, top_activations
    from zflight.figures import save_png
    from zflight.figures.report import LayerEntry, ReportContent, UnitEntry, unit_panel, unit_sprite

    layers = list(modules)
    notes: list[str] = []
    # k = the split's size: the strongest activation of every image for every unit, in one
    # pass; its first k columns are the top-k, the whole row is the histogram.
    bar.stage("top activations")
    tops = top_activations(model, dataset, layers, k=len(dataset), channels=channels,
                           batch_size=args.batch_size, progress=True)
    bar.update()
    labels, dissection_line, layer_notes = _dissection(args, model, dataset, modules, channels, dissection_doc, bar)
    bar.update()
    bar.stage("evolution")
    evolution, evolution_note = _evolution_state(ckpt, log_dir)
    figures = _log_dir_figures(log_dir, layers, notes, tmp)
    bar.update()

    image_size = tuple(int(s) for s in dataset[0][0].shape[-2:])
    entries = []
    for name in layers:
        top = tops[name]
        k = min(args.k, top.k)
        top_k = dataclasses.replace(top, values=top.values[:, :k], indices=top.indices[:, :k],
                                    positions=top.positions[:, :k])
        bar.stage("projections", f"projections {name}")
        projections, patches = top_activation_crops(model, dataset, top_k, tile=args.tile, batch_size=args.batch_size)
        bar.update()
        folder = tmp / "units" / safe_name(name)
        units = []
        for row, unit in enumerate(top.channels.tolist()):
            bar.stage("pictures", f"{name}/{unit}")
            base = f"units/{safe_name(name)}/{unit}"
            save_png(unit_panel(projections[row], patches[row]), folder / f"{unit}.png")
            evo_path, evo_note = _unit_evolution(evolution, evolution_note, name, modules[name][0], unit,
                                                 tmp, f"{base}_evolution.png")
            label = labels.get(name, {}).get(unit)
            units.append(UnitEntry(
                layer=name, unit=unit, panel=f"{base}.png",
                values=top_k.values[row].tolist(), images=top_k.indices[row].tolist(),
                maxima=top.values[row].tolist(),
                label=None if label is None else label[0], iou=None if label is None else label[1],
                detector=None if label is None else label[2],
                evolution=evo_path, evolution_note=evo_note,
            ))
            bar.update()
        sprite = f"units/{safe_name(name)}/top1.png"
        save_png(unit_sprite(projections[:, 0]), tmp / sprite)
        dotted, module = modules[name]
        rf = receptive_field(model, dotted, image_size)
        entries.append(LayerEntry(
            name=name, module=dotted, kind=_kind(module),
            output=(totals[name], *top.feature_size),
            parameters=sum(p.numel() for p in module.parameters()),
            receptive_field=int(max(rf.size)),
            units=units, sprite=sprite, dissection_note=layer_notes.get(name, ""),
            evolution_figure=figures.get(name),
        ))

    images, occlusion_line, metrics, better, scores_note = _images(args, model, dataset, tmp, bar)
    summary, summary_note = _summary(scores_doc, args.scores)
    bar.stage("accuracy")
    facts = _facts(ckpt, model, dataset, args.batch_size)
    n_split = len(dataset)
    return ReportContent(
        title=f"zflight report: {Path(args.ckpt_path).name}",
        checkpoint=str(args.ckpt_path),
        model=_model_rows(hparams, image_size),
        parameters=sum(p.numel() for p in model.parameters()),
        facts=facts,
        layers=entries,
        mined=f"the {n_split} images of the validation split of the checkpoint's embedded data set",
        dissection=dissection_line,
        images=images,
        occlusion=occlusion_line,
        metrics=metrics,
        higher_is_better=better,
        scores_note=scores_note,
        summary_scores=summary,
        summary_note=summary_note,
        notes=notes + ([evolution_note] if evolution is None and log_dir is not None else []),
    )


def _kind(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        return f"Conv2d {kh}×{kw}, stride {module.stride[0]}"
    return type(module).__name__


def _model_rows(hparams: dict[str, Any], image_size: tuple[int, ...]) -> list[tuple[str, str]]:
    arch = str(hparams.get("arch", "?"))
    width = hparams.get("width")
    return [
        ("network", arch + (f", width {width}" if width is not None else "")),
        ("input", f"{image_size[0]} × {image_size[1]} px"),
        ("classes", str(hparams.get("num_classes", "?"))),
    ]


def _facts(ckpt: dict[str, Any], model: torch.nn.Module, dataset: Any, batch_size: int) -> list[tuple[str, str]]:
    """Epoch, step, the stored monitored metric, and the validation accuracy computed now."""
    rows = []
    if "epoch" in ckpt:
        rows.append(("epochs trained", str(int(ckpt["epoch"]) + 1)))
    if "global_step" in ckpt:
        rows.append(("optimizer steps", str(int(ckpt["global_step"]))))
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor"):
            for what in ("best_model_score", "current_score"):
                value = state.get(what)
                if value is not None:
                    rows.append((f"{state['monitor']} ({what.replace('_', ' ')}, stored)", f"{float(value):.4f}"))
            break
    else:
        rows.append(("stored accuracy", "not stored (the checkpoint has no ModelCheckpoint state)"))
    correct = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        for x, y in loader:
            correct += int(model(x).argmax(1).eq(y).sum())
    rows.append(("val accuracy (computed now)", f"{correct / len(dataset):.1%} of {len(dataset)} images"))
    return rows


def _dissection(
    args: argparse.Namespace, model: torch.nn.Module, dataset: Any,
    modules: dict[str, tuple[str, torch.nn.Module]], channels: dict[str, list[int]],
    doc: dict[str, Any] | None, bar: _Progress,
) -> tuple[dict[str, dict[int, tuple[str, float, bool]]], str, dict[str, str]]:
    """``({layer: {unit: (label, iou, detector)}}, a line on where they come from, per-layer notes)``."""
    from zflight.analysis.dissection import ConceptSubset, Dissection, dissect

    if doc is not None:
        try:
            result = Dissection.from_json(doc.get("dissection", doc))
        except (KeyError, ValueError, TypeError) as err:
            raise AnalysisError(f"--dissection: {args.dissection} is not a dissection JSON ({err})") from None
        line = (f"from {args.dissection}: {result.num_images} images, quantile {result.quantile}, "
                f"IoU threshold {result.iou_threshold}")
    elif args.dissect_images == 0:
        note = "--dissect_images was 0 and no --dissection file was given."
        return {}, f"not computed ({note})", {name: note for name in modules}
    elif not hasattr(dataset, "concept_masks"):
        note = "the data set has no concept masks; pass --dissection."
        return {}, f"not computed ({note})", {name: note for name in modules}
    else:
        n = min(args.dissect_images, len(dataset))
        bar.stage("dissection")
        result = dissect(model, ConceptSubset(dataset, range(n)), list(modules), batch_size=args.batch_size,
                         progress=True)
        line = (f"computed here (Network Dissection) on the first {n} validation images: quantile "
                f"{result.quantile}, IoU threshold {result.iou_threshold}, {len(result.concepts)} concepts")
    labels: dict[str, dict[int, tuple[str, float, bool]]] = {}
    notes: dict[str, str] = {}
    by_name = {ld.name: key for key, ld in result.layers.items()}
    for name, (dotted, _m) in modules.items():
        key = name if name in result.layers else by_name.get(dotted)
        if key is None:
            notes[name] = f"the dissection has no layer {name}."
            continue
        ld = result.layers[key]
        if max(channels[name], default=-1) >= ld.num_units:
            raise AnalysisError(f"--dissection: {name} has {ld.num_units} units there, fewer than this checkpoint's")
        labels[name] = {u: (ld.labels[u], float(ld.best_iou[u]), bool(ld.detectors[u])) for u in channels[name]}
    return labels, line, notes


def _evolution_state(ckpt: dict[str, Any], log_dir: Path | None) -> tuple[dict[str, Any] | None, str]:
    """The FeatureEvolution state of the checkpoint (else of ``log_dir``'s newest), or why there is none."""
    from zflight.checkpoint import open_checkpoint

    state = _feature_evolution(ckpt)
    if state is not None:
        return state, ""
    if log_dir is None:
        return None, ("not recorded: the checkpoint holds no FeatureEvolution state (train with the "
                      "FeatureEvolution callback, or pass --log_dir with the run's folder).")
    found = sorted((log_dir / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    for path in found:
        try:
            state = _feature_evolution(open_checkpoint(path, mmap=True))
        except (FileNotFoundError, ValueError):
            continue
        if state is not None:
            return state, ""
    return None, (f"not recorded: neither the checkpoint nor --log_dir {log_dir} ({len(found)} checkpoints) "
                  "holds FeatureEvolution state.")


def _feature_evolution(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("FeatureEvolution") and isinstance(state, dict) and state.get("column_epochs"):
            return state
    return None


def _unit_evolution(
    state: dict[str, Any] | None, note: str, name: str, dotted: str, unit: int, tmp: Path, path: str,
) -> tuple[str | None, str]:
    """Draw the unit's evolution strip into ``tmp/path``; ``(path, "")``, or ``(None, why not)``."""
    from zflight.figures import save_png
    from zflight.figures.report import unit_evolution

    if state is None:
        return None, note
    tracked = state.get("channels", {})
    key = name if name in tracked else dotted if dotted in tracked else None
    if key is None or key not in state.get("columns", {}):
        return None, f"the run did not track {name} (it tracked {', '.join(sorted(tracked)) or 'no layer'})."
    if unit not in tracked[key]:
        return None, (f"the run tracked units {', '.join(map(str, tracked[key]))} of {name}, not this one "
                      "(FeatureEvolution's maps).")
    row = list(tracked[key]).index(unit)
    columns = state["columns"][key]
    # Raw float16 projections get the display rule; uint8 tiles (older checkpoints) are display-ready.
    raw = columns[0].dtype != torch.uint8
    tiles = [c[row].float() if raw else c[row].float() / 255.0 for c in columns]
    save_png(unit_evolution(tiles, [int(e) for e in state["column_epochs"]], raw=raw), tmp / path)
    return path, ""


def _log_dir_figures(log_dir: Path | None, layers: list[str], notes: list[str], tmp: Path) -> dict[str, str]:
    """Copy ``log_dir/figures/evolution_<layer>.png`` into ``tmp/evolution/``; a note when there are none."""
    if log_dir is None:
        return {}
    found = {name: log_dir / "figures" / f"evolution_{safe_name(name)}.png" for name in layers}
    found = {name: p for name, p in found.items() if p.is_file()}
    if not found:
        notes.append(f"--log_dir {log_dir} has no evolution images (figures/evolution_<layer>.png): "
                     "the run logged no feature evolution for these layers.")
        return {}
    copied = {}
    for name, src in found.items():
        dst = f"evolution/{safe_name(name)}.png"
        (tmp / "evolution").mkdir(exist_ok=True)
        shutil.copyfile(src, tmp / dst)
        copied[name] = dst
    return copied


def _images(
    args: argparse.Namespace, model: torch.nn.Module, dataset: Any, tmp: Path, bar: _Progress,
) -> tuple[list[Any], str, list[str], dict[str, bool], str]:
    """Occlusion figures and per-image explanation scores of the first ``--images`` images."""
    from zflight.analysis.explanations import HIGHER_IS_BETTER, METRICS, score_methods
    from zflight.analysis.occlusion import default_geometry, occlusion_analysis, occlusion_record
    from zflight.attribution.methods import METHODS
    from zflight.figures import figure_to_tensor, save_png
    from zflight.figures.occlusion import occlusion_figure
    from zflight.figures.report import ImageEntry

    n = args.images
    if n == 0:
        return [], "", [], {}, ""
    bar.stage("occlusion")
    items = [dataset[i] for i in range(n)]
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items])
    size, stride = default_geometry(*images.shape[-2:])
    maps, projections = occlusion_analysis(model, images, labels, size=size, stride=stride,
                                           batch_size=args.batch_size, progress=False)
    classes = list(getattr(dataset, "classes", []) or [])
    display = dataset.denormalize(images) if hasattr(dataset, "denormalize") else images.clamp(0, 1)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    note = ""
    if hasattr(dataset, "mask"):
        bar.stage("explanation scores")
        masks = torch.stack([dataset.mask(i) for i in range(n)])
        scores = score_methods(model, images, labels, masks, list(METHODS), list(METRICS),
                               batch_size=args.batch_size).scores
    else:
        note = "the data set has no object masks."
    entries = []
    for i in range(n):
        record = occlusion_record(maps, i, class_names=classes or None)
        fig = occlusion_figure(display[i : i + 1], maps.subset(i), projections[i : i + 1],
                               class_names=classes or None, titles=[f"val #{i}"])
        # Through Pillow, not savefig: matplotlib's PNG metadata names its web site, and the
        # site's files name no URL at all.
        save_png(figure_to_tensor(fig), tmp / "images" / f"val{i}.png")
        entries.append(ImageEntry(
            index=i, figure=f"images/val{i}.png", target=record["target_name"],
            predicted=record["base_label_name"], base_prob=record["base_prob"],
            lowest_prob=record["lowest_prob"], square=[int(v) for v in record["lowest_prob_square"]],
            scores={m: {k: float(v[i]) for k, v in per.items()} for m, per in scores.items()},
        ))
        bar.update()
    line = (f"a gray square of {size} px moved in steps of {stride} px; the tracked feature map is the "
            f"strongest of {maps.layer}.")
    return entries, line, list(METRICS), dict(HIGHER_IS_BETTER), note


def _summary(doc: dict[str, Any] | None, path: str | None) -> tuple[dict[str, Any] | None, str]:
    if doc is None:
        return None, "Run `python -m zflight evaluate` and pass its scores.json with --scores."
    n = doc.get("num_images", "?")
    return doc["scores"], (f"From {path}: {n} {doc.get('split', '')} images of {doc.get('checkpoint', '?')}, "
                           "mean ± standard error.")
