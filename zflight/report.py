"""The unit explorer as a function: :func:`build_report` writes it for a model and a data set.

It is thin, like a callback: it calls the analysis functions (:mod:`zflight.analysis`), hands
their results to the page's drawing (:mod:`zflight.figures.report`) and writes the folder.
``python -m zflight report`` (:mod:`zflight.cli.report`) parses its arguments and calls it; a
notebook calls it with any network and any map-style data set of ``(image, label)``.

What it computes, and from what (nothing is computed a second way):

- per unit (the first ``units`` channels of each layer, all by default), over every image of
  the data set in one streamed pass: the top-``k`` activations
  (:func:`~zflight.analysis.top_activations`) and the histogram of each image's strongest
  activation (:class:`~zflight.analysis.HistogramRecorder`, riding on the same forward pass;
  its memory is ``units × 256`` counts whatever the number of images); then the deconvnet
  projections of the top-``k`` beside their patches
  (:func:`~zflight.analysis.top_activation_crops`, Fig. 2), a few dozen units at a time, so
  memory holds one chunk of images, not ``units × k``; the Network Dissection label
  (:func:`~zflight.analysis.dissect`, when the data set has concept masks, or from a given
  :class:`~zflight.analysis.Dissection`); the unit's feature evolution from a zflight run's
  checkpoint. These need only feature maps: any module that maps an image batch to
  ``[N, C, H, W]`` works, a detection backbone or a self-supervised encoder included.
- per image (the first ``occlusion_images``), for a classifier only: the occlusion maps of
  Fig. 7 (:func:`~zflight.analysis.occlusion.occlusion_analysis`) and, when the data set has
  object masks, every attribution method's explanation scores
  (:func:`~zflight.analysis.score_methods`). For a model that is not a classifier
  (``classifier=False``) the page says in one line that this section needs one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["build_report"]

# Images projected per deconvnet call when drawing the unit pages: bounds the memory of the
# projection stage (images, projections and their gradients) whatever the number of units.
_CHUNK_IMAGES = 512


def build_report(
    model: nn.Module,
    dataset: Any,
    out: str | os.PathLike,
    *,
    layers: Sequence[str],
    units: int | None = None,
    k: int = 9,
    tile: int = 32,
    batch_size: int = 100,
    occlusion_images: int = 4,
    classifier: bool = True,
    classes: Sequence[str] | None = None,
    label_classes: Sequence[int] | str | None = None,
    facts: Mapping[str, str] | None = None,
    title: str = "zflight report",
    checkpoint: str = "",
    data_description: str = "",
    dissection: Any = None,
    dissection_from: str = "",
    dissect_images: int = 500,
    scores: Mapping[str, Any] | None = None,
    scores_from: str = "",
    run: Mapping[str, Any] | None = None,
    log_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Write the unit explorer of ``model`` on ``dataset`` into the folder ``out``; return its ``index.html``.

    The model runs where its parameters are (move it to a GPU first to run there) and is left
    as found (modes and hooks restored). ``out`` is created if missing; ``index.html`` is
    written last, so a failed build leaves none (the command line also builds the whole folder
    beside its destination and renames it).

    Args:
        model: the network (``eval`` mode is used and restored).
        dataset: a map-style data set of ``(normalized image, label)`` (a label < 0: none). Used
            when present: ``denormalize(x)`` (patches for display), ``classes`` (the labels'
            names), ``concept_masks(i)`` (dissection here), ``mask(i)`` (explanation scores).
        out: the site's folder.
        layers: the layers (dotted module names; a unique suffix works).
        units: the first ``units`` channels of each layer (``None``: all).
        k: top activations shown per unit.
        tile: side of each top-k tile in pixels.
        batch_size: images per forward pass.
        occlusion_images: the first N images get occlusion maps and scores (0: none).
        classifier: whether the model returns class scores; ``False`` skips the image section
            (occlusion probability and scores need a classifier) with one line saying so.
        classes: the model's class names (``None``: the data set's, else numbers).
        label_classes: how an image's label names the model's class (occlusion's tracked class,
            the accuracy): ``None``: the label is the class when every label indexes the
            model's output and the data set's ``classes`` (if any) are ``classes``; a list:
            the model class of each label; ``"predicted"``: the predicted class stands in.
        facts: ``{name: value}`` rows about the model for the overview (source, weights,
            preprocessing, where the class names come from).
        title: the page title.
        checkpoint: a checkpoint's path, shown in the overview ("": no row).
        data_description: what the images are, for the overview ("the 1000 images of the
            validation split of ...").
        dissection: a :class:`~zflight.analysis.Dissection` to take the labels from, instead of
            dissecting here.
        dissection_from: where ``dissection`` comes from (a file name), for the overview.
        dissect_images: images dissected here (the first N) when no ``dissection`` is given and
            the data set has concept masks (0: none).
        scores: a ``scores.json`` document of ``python -m zflight evaluate`` (data-set-wide
            explanation scores), or ``None``.
        scores_from: where ``scores`` come from, for the overview.
        run: a zflight ``fit`` checkpoint as a dict (its epoch, stored metric and
            FeatureEvolution state are shown), or ``None``.
        log_dir: that run's folder (its evolution figures and other checkpoints), or ``None``.
        progress: show a progress bar and print the build's summary.

    Returns:
        The path of ``index.html``.

    Raises:
        ValueError: a bad argument (the message names it): an unknown layer, ``units`` < 1,
            more ``occlusion_images`` than images, an empty data set, a dissection without a
            requested layer's units.

    Example:
        >>> import torchvision, zflight
        >>> model = torchvision.models.resnet18(weights=None)
        >>> zflight.build_report(model, images, "explorer", layers=["layer1", "layer4"],
        ...                      units=16, facts={"source": "torchvision resnet18"})  # doctest: +SKIP
        PosixPath('explorer/index.html')
    """
    from tqdm.auto import tqdm

    from zflight.attribution import resolve_layer
    from zflight.figures import write_json
    from zflight.figures.report import write_site

    _check_arguments(dataset, layers, units, k, tile, batch_size, occlusion_images, dissect_images)
    modules = {}
    for name in layers:
        try:
            modules[name] = resolve_layer(model, name)
        except ValueError as err:
            raise ValueError(f"layers: {err}") from None
    log_dir = None if log_dir is None else Path(log_dir)
    started = time.perf_counter()
    totals = {name: _channels_of(model, module, dataset) for name, (_, module) in modules.items()}
    channels = {name: list(range(min(units or total, total))) for name, total in totals.items()}
    n_units = sum(len(c) for c in channels.values())
    n_images = occlusion_images if classifier else 0
    bar = _Progress(tqdm(total=4 + len(layers) + n_units + n_images, desc="report", unit="step", disable=not progress))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        content = _build(model, dataset, out, modules, totals, channels, bar, options=dict(
            k=k, tile=tile, batch_size=batch_size, occlusion_images=n_images, classifier=classifier,
            classes=classes, label_classes=label_classes, facts=dict(facts or {}), title=title, checkpoint=checkpoint,
            data_description=data_description, dissection=dissection, dissection_from=dissection_from,
            dissect_images=dissect_images, scores=scores, scores_from=scores_from, run=run or {},
            log_dir=log_dir, progress=progress))
        bar.stage("page")
        document = content.to_json()
        write_site(content, out)
        bar.stage("done")
        document["build_seconds"] = {key: round(v, 2) for key, v in bar.seconds.items()}
        write_json(document, out / "report.json")
    finally:
        bar.close()
    if progress:
        stages = ", ".join(f"{key} {v:.1f}" for key, v in bar.seconds.items())
        shown = f"{n_images} image{'' if n_images == 1 else 's'}"
        print(f"zflight report: {n_units} units, {shown} in {time.perf_counter() - started:.1f} s "
              f"(seconds: {stages})", flush=True)
    return out / "index.html"


# ----------------------------------------------------------------------------------- internals
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


def _check_arguments(dataset: Any, layers: Sequence[str], units: int | None, k: int, tile: int,
                     batch_size: int, occlusion_images: int, dissect_images: int) -> None:
    for name, value in (("units", units), ("k", k), ("tile", tile), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value in (("occlusion_images", occlusion_images), ("dissect_images", dissect_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if isinstance(layers, str) or not list(layers):
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers: a layer is named twice: {' '.join(layers)}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there are no images to mine")
    if occlusion_images > len(dataset):
        raise ValueError(f"occlusion_images: {occlusion_images} is more than the {len(dataset)} images")


def _image(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _label(item: Any) -> int:
    return int(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else -1


def _device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return torch.device("cpu") if param is None else param.device


def _channels_of(model: nn.Module, module: nn.Module, dataset: Any) -> int:
    """Channels of ``module``'s output, from one image."""
    from zflight.attribution._layers import forward_to, preserve_modes

    with preserve_modes(model, eval_mode=True), torch.no_grad():
        out = forward_to(model, module, _image(dataset[0])[None].to(_device(model)))
    return int(out.shape[1])


def _build(
    model: nn.Module, dataset: Any, out: Path, modules: dict[str, tuple[str, nn.Module]],
    totals: dict[str, int], channels: dict[str, list[int]], bar: _Progress, options: dict[str, Any],
) -> Any:
    """Run the analyses, draw the pictures into ``out``, and return the page's content."""
    from zflight.analysis import HistogramRecorder, top_activations
    from zflight.figures.report import ReportContent

    o = options
    layers = list(modules)
    notes: list[str] = []
    bar.stage("top activations")
    with HistogramRecorder(model, channels) as recorder:
        tops = top_activations(model, dataset, layers, k=min(o["k"], len(dataset)), channels=channels,
                               batch_size=o["batch_size"], progress=o["progress"])
    histograms = recorder.result()
    bar.update()
    labels, dissection_line, layer_notes = _dissection(model, dataset, modules, channels, o, bar)
    bar.update()
    bar.stage("evolution")
    evolution, evolution_note = _evolution_state(o["run"], o["log_dir"])
    figures = _log_dir_figures(o["log_dir"], layers, notes, out)
    bar.update()
    entries = [
        _layer(model, dataset, out, name, modules[name], totals[name], tops[name], histograms[name],
               labels.get(name, {}), layer_notes.get(name, ""), evolution, evolution_note, figures.get(name), o, bar)
        for name in layers
    ]
    images, occlusion_line, metrics, better, scores_note, images_note = _images(model, dataset, out, o, bar)
    summary, summary_note = _summary(o["scores"], o["scores_from"])
    bar.stage("accuracy")
    image_size = tuple(int(s) for s in _image(dataset[0]).shape[-2:])
    facts = _run_facts(o["run"]) + _accuracy(model, dataset, o)
    described = o["data_description"]
    return ReportContent(
        title=o["title"],
        checkpoint=o["checkpoint"],
        model=list(o["facts"].items()) + [("input", f"{image_size[0]} × {image_size[1]} px")],
        parameters=sum(p.numel() for p in model.parameters()),
        facts=facts,
        layers=entries,
        mined=described or f"the {len(dataset)} images given",
        dissection=dissection_line,
        images=images,
        images_note=images_note,
        occlusion=occlusion_line,
        metrics=metrics,
        higher_is_better=better,
        scores_note=scores_note,
        summary_scores=summary,
        summary_note=summary_note,
        notes=notes + ([evolution_note] if evolution is None and o["log_dir"] is not None else []),
    )


def _layer(
    model: nn.Module, dataset: Any, out: Path, name: str, dotted_module: tuple[str, nn.Module], total: int,
    top: Any, histograms: Any, labels: dict[int, tuple[str, float, bool]], dissection_note: str,
    evolution: dict[str, Any] | None, evolution_note: str, figure: str | None, o: dict[str, Any], bar: _Progress,
) -> Any:
    """One layer: project its units' top-k a chunk at a time, draw each unit's panel and the sprite."""
    from zflight.analysis import receptive_field, top_activation_crops
    from zflight.figures import save_png
    from zflight.figures.report import (
        LayerEntry,
        UnitEntry,
        layer_stem,
        unit_panel,
        unit_sprite,
    )

    stem = layer_stem(name)
    dotted, module = dotted_module
    counts = histograms.coarse(24)
    step = max(1, _CHUNK_IMAGES // max(1, top.k))
    units, top1 = [], []
    for start in range(0, top.channels.numel(), step):
        part = slice(start, start + step)
        chunk = dataclasses.replace(top, channels=top.channels[part], values=top.values[part],
                                    indices=top.indices[part], positions=top.positions[part])
        bar.stage("projections", f"projections {name} {start}")
        # Under torchrun each rank projects its share of the chunk's batches; all get every tile.
        projections, patches = top_activation_crops(model, dataset, chunk, tile=o["tile"],
                                                    batch_size=o["batch_size"], shard=True)
        top1.append(projections[:, 0])
        bar.stage("pictures", f"{name} {start}")
        for row, unit in enumerate(chunk.channels.tolist()):
            base = f"units/{stem}/{unit}"
            save_png(unit_panel(projections[row], patches[row]), out / f"{base}.png")
            evo_path, evo_note = _unit_evolution(evolution, evolution_note, name, dotted, unit, out,
                                                 f"{base}_evolution.png")
            label = labels.get(unit)
            i = start + row
            units.append(UnitEntry(
                layer=name, unit=unit, panel=f"{base}.png",
                values=chunk.values[row].tolist(), images=chunk.indices[row].tolist(),
                histogram=counts[i].tolist(),
                histogram_range=(float(histograms.minimum[i]), float(histograms.maximum[i])),
                label=None if label is None else label[0], iou=None if label is None else label[1],
                detector=None if label is None else label[2],
                evolution=evo_path, evolution_note=evo_note,
            ))
            bar.update()
    sprite = f"units/{stem}/top1.png"
    save_png(unit_sprite(torch.cat(top1)), out / sprite)
    bar.update()
    image_size = tuple(int(s) for s in _image(dataset[0]).shape[-2:])
    try:
        rf: int | None = int(max(receptive_field(model, dotted, image_size).size))
    except (ValueError, TypeError, RuntimeError):
        rf = None  # a module the receptive-field tracer cannot follow: the column stays empty
    return LayerEntry(
        name=name, module=dotted, kind=_kind(module), output=(total, *top.feature_size),
        parameters=sum(p.numel() for p in module.parameters()), receptive_field=rf,
        units=units, sprite=sprite, dissection_note=dissection_note, evolution_figure=figure,
    )


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return f"Conv2d {kh}×{kw}, stride {module.stride[0]}"
    return type(module).__name__


def _run_facts(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Epoch, step and the stored monitored metric of a zflight run's checkpoint."""
    if not run:
        return []
    rows = []
    if "epoch" in run:
        rows.append(("epochs trained", str(int(run["epoch"]) + 1)))
    if "global_step" in run:
        rows.append(("optimizer steps", str(int(run["global_step"]))))
    for key, state in (run.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor"):
            for what in ("best_model_score", "current_score"):
                value = state.get(what)
                if value is not None:
                    rows.append((f"{state['monitor']} ({what.replace('_', ' ')}, stored)", f"{float(value):.4f}"))
            break
    else:
        rows.append(("stored accuracy", "not stored (the checkpoint has no ModelCheckpoint state)"))
    return rows


def _targets(model: nn.Module, dataset: Any, indices: Sequence[int], o: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(images, targets, from_labels)``: the labels when they index the model's classes, else the predictions."""
    from zflight.attribution._layers import preserve_modes

    items = [dataset[i] for i in indices]
    images = torch.stack([_image(x) for x in items])
    labels = torch.tensor([_label(x) for x in items])
    with preserve_modes(model, eval_mode=True), torch.no_grad():
        logits = torch.cat([model(images[i:i + o["batch_size"]].to(_device(model))).cpu()
                            for i in range(0, len(images), o["batch_size"])])
    return images, *_choose_targets(labels, logits, dataset, o)


def _choose_targets(labels: torch.Tensor, logits: torch.Tensor, dataset: Any,
                    o: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    given = o["label_classes"]
    if isinstance(given, str):
        return logits.argmax(1), False
    if given is not None:
        table = torch.as_tensor(list(given), dtype=torch.int64)
        if bool(((labels >= 0) & (labels < len(table))).all()):
            return table[labels], True
        return logits.argmax(1), False
    data_classes = getattr(dataset, "classes", None)
    named_alike = o["classes"] is None or data_classes is None or list(data_classes) == list(o["classes"])
    usable = logits.dim() == 2 and bool(((labels >= 0) & (labels < logits.shape[1])).all()) and named_alike
    return (labels, True) if usable else (logits.argmax(1), False)


def _accuracy(model: nn.Module, dataset: Any, o: dict[str, Any]) -> list[tuple[str, str]]:
    """The accuracy computed now, when the model is a classifier and the labels are its classes."""
    from zflight.attribution._layers import preserve_modes

    if not o["classifier"]:
        return []
    correct, seen = 0, 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=o["batch_size"])
    with preserve_modes(model, eval_mode=True), torch.no_grad():
        for batch in loader:
            x, y = batch[0], batch[1]
            logits = model(x.to(_device(model))).cpu()
            y, from_labels = _choose_targets(y, logits, dataset, o)
            if not from_labels:
                return [("accuracy", "not computed: the images' labels are not the model's classes")]
            correct += int(logits.argmax(1).eq(y).sum())
            seen += len(y)
    return [("accuracy (computed now)", f"{correct / seen:.1%} of {seen} images")]


def _dissection(
    model: nn.Module, dataset: Any, modules: dict[str, tuple[str, nn.Module]], channels: dict[str, list[int]],
    o: dict[str, Any], bar: _Progress,
) -> tuple[dict[str, dict[int, tuple[str, float, bool]]], str, dict[str, str]]:
    """``({layer: {unit: (label, iou, detector)}}, a line on where they come from, per-layer notes)``."""
    from zflight.analysis.dissection import ConceptSubset, dissect

    result = o["dissection"]
    if result is not None:
        line = (f"from {o['dissection_from'] or 'the given dissection'}: {result.num_images} images, "
                f"quantile {result.quantile}, IoU threshold {result.iou_threshold}")
    elif o["dissect_images"] == 0:
        note = "dissect_images was 0 and no dissection was given."
        return {}, f"not computed ({note})", {name: note for name in modules}
    elif not hasattr(dataset, "concept_masks"):
        note = "the images have no concept masks; pass a dissection made on images that have them."
        return {}, f"not computed ({note})", {name: note for name in modules}
    else:
        n = min(o["dissect_images"], len(dataset))
        bar.stage("dissection")
        result = dissect(model, ConceptSubset(dataset, range(n)), list(modules), batch_size=o["batch_size"],
                         progress=o["progress"])
        line = (f"computed here (Network Dissection) on the first {n} images: quantile "
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
            raise ValueError(f"dissection: {name} has {ld.num_units} units there, fewer than this model's")
        labels[name] = {u: (ld.labels[u], float(ld.best_iou[u]), bool(ld.detectors[u])) for u in channels[name]}
    return labels, line, notes


def _evolution_state(run: Mapping[str, Any], log_dir: Path | None) -> tuple[dict[str, Any] | None, str]:
    """The FeatureEvolution state of the run's checkpoint (else of ``log_dir``'s newest), or why there is none."""
    from zflight.checkpoint import open_checkpoint

    state = _feature_evolution(run)
    if state is not None:
        return state, ""
    if log_dir is None:
        if not run:
            return None, "not recorded: the model is not a zflight run's checkpoint."
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


def _feature_evolution(run: Mapping[str, Any]) -> dict[str, Any] | None:
    for key, state in (run.get("callbacks") or {}).items():
        if str(key).startswith("FeatureEvolution") and isinstance(state, dict) and state.get("column_epochs"):
            return state
    return None


def _unit_evolution(
    state: dict[str, Any] | None, note: str, name: str, dotted: str, unit: int, out: Path, path: str,
) -> tuple[str | None, str]:
    """Draw the unit's evolution strip into ``out/path``; ``(path, "")``, or ``(None, why not)``."""
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
    save_png(unit_evolution(tiles, [int(e) for e in state["column_epochs"]], raw=raw), out / path)
    return path, ""


def _log_dir_figures(log_dir: Path | None, layers: list[str], notes: list[str], out: Path) -> dict[str, str]:
    """Copy ``log_dir/figures/evolution_<layer>.png`` into ``out/evolution/``; a note when there are none."""
    from zflight.figures.report import layer_stem

    if log_dir is None:
        return {}
    # The file names FeatureEvolution writes: the layer's name with "/" replaced.
    found = {name: log_dir / "figures" / f"evolution_{name.replace('/', '_')}.png" for name in layers}
    found = {name: p for name, p in found.items() if p.is_file()}
    if not found:
        notes.append(f"--log_dir {log_dir} has no evolution images (figures/evolution_<layer>.png): "
                     "the run logged no feature evolution for these layers.")
        return {}
    copied = {}
    for name, src in found.items():
        dst = f"evolution/{layer_stem(name)}.png"
        (out / "evolution").mkdir(exist_ok=True)
        shutil.copyfile(src, out / dst)
        copied[name] = dst
    return copied


def _images(
    model: nn.Module, dataset: Any, out: Path, o: dict[str, Any], bar: _Progress,
) -> tuple[list[Any], str, list[str], dict[str, bool], str, str]:
    """Occlusion figures and per-image explanation scores of the first ``occlusion_images`` images."""
    from zflight.analysis.explanations import HIGHER_IS_BETTER, METRICS, score_methods
    from zflight.analysis.occlusion import (
        default_geometry,
        occlusion_analysis,
        occlusion_record,
    )
    from zflight.attribution.methods import METHODS
    from zflight.figures import figure_to_tensor, save_png
    from zflight.figures.occlusion import occlusion_figure
    from zflight.figures.report import ImageEntry

    if not o["classifier"]:
        return [], "", [], {}, "", ("the model is not a classifier: occlusion probabilities and explanation "
                                    "scores need class scores.")
    n = o["occlusion_images"]
    if n == 0:
        return [], "", [], {}, "", "occlusion_images was 0."
    bar.stage("occlusion")
    images, targets, from_labels = _targets(model, dataset, range(n), o)
    device = _device(model)
    size, stride = default_geometry(*images.shape[-2:])
    maps, projections = occlusion_analysis(model, images.to(device), targets.to(device), size=size, stride=stride,
                                           batch_size=o["batch_size"], progress=False)
    names = list(o["classes"] or getattr(dataset, "classes", None) or []) or None
    display = dataset.denormalize(images) if hasattr(dataset, "denormalize") else _min_max(images)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    note = ""
    if hasattr(dataset, "mask"):
        bar.stage("explanation scores")
        masks = torch.stack([dataset.mask(i) for i in range(n)])
        scores = score_methods(model, images.to(device), targets.to(device), masks.to(device), list(METHODS),
                               list(METRICS), batch_size=o["batch_size"]).scores
    else:
        note = "the data set has no object masks."
    entries = []
    for i in range(n):
        record = occlusion_record(maps, i, class_names=names)
        fig = occlusion_figure(display[i : i + 1], maps.subset(i), projections[i : i + 1].cpu(),
                               class_names=names, titles=[f"#{i}"])
        # Through Pillow, not savefig: matplotlib's PNG metadata names its web site, and the
        # site's files name no URL at all.
        save_png(figure_to_tensor(fig), out / "images" / f"val{i}.png")
        entries.append(ImageEntry(
            index=i, figure=f"images/val{i}.png", target=str(record["target_name"]),
            predicted=str(record["base_label_name"]), base_prob=record["base_prob"],
            lowest_prob=record["lowest_prob"], square=[int(v) for v in record["lowest_prob_square"]],
            scores={m: {key: float(v[i]) for key, v in per.items()} for m, per in scores.items()},
        ))
        bar.update()
    line = (f"a gray square of {size} px moved in steps of {stride} px; the tracked feature map is the "
            f"strongest of {maps.layer}.")
    if not from_labels:
        line += " The images' labels are not the model's classes: the tracked class is the predicted one."
    return entries, line, list(METRICS), dict(HIGHER_IS_BETTER), note, ""


def _min_max(images: torch.Tensor) -> torch.Tensor:
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-12)


def _summary(doc: Mapping[str, Any] | None, path: str) -> tuple[dict[str, Any] | None, str]:
    if doc is None:
        return None, "Run `python -m zflight evaluate` and pass its scores.json with --scores."
    n = doc.get("num_images", "?")
    return dict(doc["scores"]), (f"From {path}: {n} {doc.get('split', '')} images of {doc.get('checkpoint', '?')}, "
                                 "mean ± standard error.")
