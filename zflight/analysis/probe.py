"""Linear probes, layer by layer: what a linear read-out recovers from each layer's features.

The paper's Section 5 (Tables 4-7) asks what the features are worth: a linear classifier on a
layer's activations, trained on a few images per class of a new data set (Caltech-101 with 30
per class), is more accurate the higher the layer (Table 7: 44.8 % at layer 1, 86.2 % at layer
5). Alain & Bengio (2016) call these classifiers *linear probes*. :func:`linear_probe` measures
them:

- **Features** of every requested layer come from one forward pass per batch (the model stops
  after the deepest of them), each reduced as it is produced by a pooling (:data:`POOLINGS`);
  only the pooled rows are kept.
- **Classifiers**: standardized features, then an L2-regularized multinomial logistic regression
  (``classifier="logistic"``) or a one-vs-rest squared-hinge linear SVM (``"svm"``, the
  default, as ``LinearSVC``), solved to convergence by full-batch L-BFGS in float64 on the
  model's device (:mod:`zflight.analysis._linear`). ``C`` is chosen by stratified 3-fold
  cross-validation on the training split unless given.
- **The Caltech protocol**: ``train_per_class=N`` and ``splits=S`` draw ``S`` random splits with
  ``N`` training images per class; the rest of each class (up to ``test_per_class``) is the
  test set, unless a separate ``test`` data set is given. Results are per split, reported as
  mean ± standard deviation, as Tables 4-5 do.

Pooling. A conv layer's maps are ``C x H x W`` numbers per image: 1.16 M at ZFNet's conv1 on
224 px images, 4.6 GB per 1,000 images. The default, ``"grid"`` (average pooling to a 2x2 grid,
``4 C`` features), fits any layer of any CNN in memory (6,000 images x 4 x 384 channels of
ZFNet's conv3 are 37 MB), keeps where in the image a feature fired (left/right, top/bottom:
what tells a triangle pointing up from one pointing down), and keeps the probe's cost
in the solve, not in the features. ``"avg"`` and ``"max"`` keep one number per channel
(translation-invariant, cheaper, blind to layout); ``"flatten"`` keeps everything (small maps
only: fc layers, or conv5 of a small network).

Example:
    >>> import zflight
    >>> from zflight.data.transfer import TransferShapesDataset
    >>> model = zflight.zfnet(num_classes=10, width=0.125, image_size=64)
    >>> result = linear_probe(model, TransferShapesDataset(200), ["conv1", "fc7"],
    ...                       train_per_class=5, test_per_class=10, C=0.1, progress=False)
    >>> sorted(result.layers), result.layers["fc7"].test_accuracy[0] <= 1.0
    (['conv1', 'fc7'], True)
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from zflight.analysis._linear import (
    C_GRID,
    LOSSES,
    LinearClassifier,
    cross_validate,
    fit_linear_classifier,
    standardize,
)
from zflight.analysis.topk import _model_device
from zflight.attribution._layers import forward_until, preserve_modes, resolve_layer

__all__ = [
    "POOLINGS",
    "LayerProbe",
    "LinearClassifier",
    "ProbeResult",
    "fit_linear_classifier",
    "linear_probe",
    "probe_features",
]

Pooling = Literal["grid", "avg", "max", "flatten"]
#: How a conv layer's ``[C, H, W]`` maps become a feature vector (a ``[C]`` layer is kept as is):
#: ``grid`` averages each map over a ``grid x grid`` partition (``C * grid^2`` features),
#: ``avg`` and ``max`` over the whole map (``C``), ``flatten`` keeps every value (``C*H*W``).
POOLINGS: tuple[str, ...] = ("grid", "avg", "max", "flatten")


@dataclass(frozen=True)
class LayerProbe:
    """One layer's linear probe, over every split.

    Attributes:
        layer: the layer as requested (``"conv5"``).
        name: its dotted name in the model (``"features.conv5"``).
        dims: features per image after pooling.
        C: ``[S]`` the regularization used in each split (chosen or given).
        train_accuracy: ``[S]`` accuracy on each split's training images.
        test_accuracy: ``[S]`` accuracy on each split's test images.
        mean_class_accuracy: ``[S]`` the mean over classes of each class's test accuracy
            (Caltech's measure; equal to ``test_accuracy`` when the test set is balanced).
        confusion: ``[K, K]`` int64 test counts summed over the splits, row = true class,
            column = predicted class.
        converged: every solve reached its tolerance.
    """

    layer: str
    name: str
    dims: int
    C: list[float]
    train_accuracy: list[float]
    test_accuracy: list[float]
    mean_class_accuracy: list[float]
    confusion: torch.Tensor
    converged: bool

    def mean_std(self, metric: str = "mean_class_accuracy") -> tuple[float, float]:
        """``(mean, standard deviation)`` of a metric over the splits.

        The sample standard deviation (``n - 1``), 0 for a single split.

        Example:
            >>> probe.mean_std("test_accuracy")  # doctest: +SKIP
            (0.8123, 0.0112)
        """
        values = getattr(self, metric)
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, 0.0
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`linear_probe` measured: one :class:`LayerProbe` per layer, in the order asked.

    Attributes:
        layers: ``{layer: LayerProbe}``.
        classes: the class names, in label order (dropped classes left out).
        classifier: ``"svm"`` or ``"logistic"``.
        pooling: the pooling (``"grid"`` etc.) and ``grid`` its size.
        grid: the grid's side for ``pooling="grid"``.
        splits: how many splits.
        train_per_class: training images per class per split (``None``: every training image).
        num_train: ``[S]`` training images per split.
        num_test: ``[S]`` test images per split.
        seconds: ``{"features": ..., "solve": ...}`` wall-clock time of the two stages.
    """

    layers: dict[str, LayerProbe]
    classes: list[str]
    classifier: str
    pooling: str
    grid: int
    splits: int
    train_per_class: int | None
    num_train: list[int]
    num_test: list[int]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: settings, and per layer the per-split numbers and their mean ± std.

        Example:
            >>> json.dumps(result.to_dict())  # doctest: +SKIP
        """
        layers = {}
        for key, p in self.layers.items():
            entry: dict[str, Any] = {"name": p.name, "dims": p.dims, "C": p.C, "converged": p.converged}
            for metric in ("train_accuracy", "test_accuracy", "mean_class_accuracy"):
                mean, std = p.mean_std(metric)
                entry[metric] = {"mean": mean, "std": std, "splits": getattr(p, metric)}
            entry["confusion"] = p.confusion.tolist()
            layers[key] = entry
        return {
            "classifier": self.classifier,
            "pooling": self.pooling,
            "grid": self.grid,
            "splits": self.splits,
            "train_per_class": self.train_per_class,
            "classes": self.classes,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "seconds": self.seconds,
            "layers": layers,
        }


def probe_features(
    model: nn.Module,
    dataset: Dataset,
    layers: Sequence[str | nn.Module],
    *,
    pooling: Pooling = "grid",
    grid: int = 2,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features of several layers from one forward pass per batch: ``({layer: [N, D]}, labels [N])``.

    Each layer's output is pooled inside its forward hook, as it is produced (so an in-place
    ReLU after it cannot change it, and only pooled rows are ever kept), and the forward stops
    after the deepest requested layer. The model runs in ``eval()`` mode without gradients; its
    flags are restored afterwards.

    Args:
        model: any CNN.
        dataset: a map-style data set of ``(image, label)`` items.
        layers: layer names (a unique suffix such as ``"conv5"``) or submodules.
        pooling: one of :data:`POOLINGS`.
        grid: the side of the ``"grid"`` pooling.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        device: where to run and keep the features; ``None`` is the model's device.
        progress: show a tqdm progress bar.

    Returns:
        Float32 features per layer (keyed as given) and the int64 labels, on ``device``.

    Raises:
        ValueError: an unknown layer (with close names), a bad pooling, an empty data set.

    Example:
        >>> feats, labels = probe_features(model, ds, ["conv1", "fc6"], progress=False)  # doctest: +SKIP
        >>> feats["conv1"].shape  # doctest: +SKIP
        torch.Size([100, 96])
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty: there are no images to probe")
    keys, resolved = _resolve_layers(model, layers)
    device = _model_device(model) if device is None else torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)  # type: ignore[arg-type]
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    labels: list[torch.Tensor] = []
    current: dict[str, torch.Tensor] = {}

    def make_hook(key: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if key in current:  # a module called twice keeps its first output
                return
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layer {key!r} returns {type(out).__name__}, not a tensor")
            current[key] = _pool(out, pooling, grid, key)

        return hook

    handles = [module.register_forward_hook(make_hook(key)) for key, (_, module) in zip(keys, resolved)]
    try:
        with preserve_modes(model, eval_mode=True), torch.no_grad():
            for batch in _progress(loader, progress, len(dataset)):  # type: ignore[arg-type]
                images, y = _split_batch(batch)
                current.clear()
                forward_until(model, [m for _, m in resolved], images.to(device, non_blocking=True))
                missing = [k for k in keys if k not in current]
                if missing:
                    raise ValueError(f"layer={missing[0]!r} was never called in the forward pass of "
                                     f"{type(model).__name__}")
                for k in keys:
                    rows[k].append(current[k].float())
                labels.append(y.to(device))
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in rows.items()}, torch.cat(labels).long()


def linear_probe(
    model: nn.Module,
    train: Dataset,
    layers: Sequence[str | nn.Module],
    *,
    test: Dataset | None = None,
    classifier: Literal["svm", "logistic"] = "svm",
    C: float | None = None,
    Cs: Sequence[float] = C_GRID,
    folds: int = 3,
    pooling: Pooling = "grid",
    grid: int = 2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    splits: int = 1,
    drop_class: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Train a linear classifier on each layer's features and score it on held-out images.

    See the module docstring for the features, classifiers and protocol. The features of every
    image are computed once (one forward pass per batch for all layers); the splits and the
    cross-validation reuse them.

    Args:
        model: any CNN (``nn.Module``); left exactly as found.
        train: the training images, ``(image, label)`` items; ``.classes`` names the labels when
            it has it.
        layers: the layers to probe (names such as ``"conv1"`` or submodules).
        test: separate test images with the same classes; ``None``: each split's test images are
            the training data set's images not drawn for training (needs ``train_per_class``).
        classifier: ``"svm"`` (one-vs-rest squared hinge, as ``LinearSVC``) or ``"logistic"``
            (softmax, as ``LogisticRegression``).
        C: the inverse regularization strength; ``None`` picks it from ``Cs`` by ``folds``-fold
            stratified cross-validation on each split's training images.
        Cs: the values cross-validation tries.
        folds: cross-validation folds (fewer when a class has fewer training images).
        pooling: how conv maps become features (:data:`POOLINGS`).
        grid: the side of the ``"grid"`` pooling.
        train_per_class: training images per class in each split, drawn at random; ``None``
            uses every training image (one split).
        test_per_class: at most this many test images per class (the first ones of a separate
            ``test``; the first of each class's shuffled rest otherwise); ``None``: all.
        splits: how many random splits (needs ``train_per_class`` when more than one).
        drop_class: class names to leave out (Caltech-101's ``BACKGROUND_Google``).
        seed: seeds the splits and the folds.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        device: where to run the model and the solvers; ``None`` is the model's device.
        progress: show a progress bar over the images.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: an unknown layer (the message lists close names), ``train_per_class``
            larger than a class holds, a ``test`` whose classes differ from ``train``'s, fewer
            than two classes, or any other bad argument (the message names it).

    Example:
        >>> result = linear_probe(model, train_ds, ["conv1", "conv5", "fc7"], test=test_ds)  # doctest: +SKIP
        >>> result.layers["conv5"].mean_std("test_accuracy")  # doctest: +SKIP
        (0.862, 0.0)
    """
    if classifier not in LOSSES:
        raise ValueError(f"classifier must be one of {', '.join(LOSSES)}; got {classifier!r}")
    if C is not None and (isinstance(C, bool) or not isinstance(C, (int, float)) or not C > 0):
        raise ValueError(f"C must be a number > 0, got {C!r}")
    for name, value in (("splits", splits), ("folds", folds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if test is None and train_per_class is None:
        raise ValueError("train_per_class: give it (the rest of each class is the test set) or a test data set")
    if splits > 1 and train_per_class is None:
        raise ValueError(f"splits={splits} needs train_per_class: without it every split is the same")
    layer_list = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not layer_list:
        raise ValueError("layers is empty: name at least one layer")
    _resolve_layers(model, layer_list)  # an unknown layer fails before any image is read

    classes = _class_names(train, "train")
    if test is not None:
        _check_same_classes(classes, _class_names(test, "test"))
    keep = _kept_classes(classes, drop_class)

    targets = _targets(train)
    if targets is not None and keep:
        # Counts from the labels alone: a split that cannot be drawn fails before any image is read.
        known = torch.tensor([keep.index(t) for t in targets if t in keep], dtype=torch.long)
        _check_two_classes(known, [classes[c] for c in keep])
        _draw_splits(known, None if test is None else known[:0], train_per_class, test_per_class, 1, seed,
                     [classes[c] for c in keep], check_only=True)

    device = _model_device(model) if device is None else torch.device(device)
    started = time.perf_counter()
    train_idx = _indices_of_classes(train, keep)
    feats, labels = probe_features(model, Subset(train, train_idx), layer_list, pooling=pooling, grid=grid,
                                   batch_size=batch_size, num_workers=num_workers, device=device,
                                   progress=progress)
    feats, labels = _relabel(feats, labels, keep)
    if test is not None:
        test_idx = _indices_of_classes(test, keep)
        t_feats, t_labels = probe_features(model, Subset(test, test_idx), layer_list, pooling=pooling,
                                           grid=grid, batch_size=batch_size, num_workers=num_workers,
                                           device=device, progress=progress)
        t_feats, t_labels = _relabel(t_feats, t_labels, keep)
    features_s = time.perf_counter() - started
    names = [classes[c] for c in keep] if classes is not None else [str(c) for c in keep]
    k = len(keep)
    _check_two_classes(labels, names)

    plans = _draw_splits(labels, None if test is None else t_labels, train_per_class, test_per_class,
                         splits, seed, names)
    started = time.perf_counter()
    keys, resolved = _resolve_layers(model, layer_list)
    results: dict[str, LayerProbe] = {}
    for key, (full_name, _) in zip(keys, resolved):
        per = {"C": [], "train_accuracy": [], "test_accuracy": [], "mean_class_accuracy": []}
        confusion = torch.zeros(k, k, dtype=torch.int64)
        converged = True
        for s, (tr, te) in enumerate(plans):
            x_tr = feats[key][tr]
            y_tr = labels[tr]
            if test is None:
                x_te, y_te = feats[key][te], labels[te]
            else:
                x_te, y_te = t_feats[key][te], t_labels[te]
            c = C
            if c is None:
                c, _ = cross_validate(x_tr, y_tr, loss=classifier, num_classes=k, Cs=Cs, folds=folds,
                                      seed=seed + s)
            x_tr, x_te = standardize(x_tr, x_te)
            clf = fit_linear_classifier(x_tr, y_tr, loss=classifier, C=c, num_classes=k)
            converged &= clf.converged
            pred_tr, pred_te = clf.predict(x_tr), clf.predict(x_te)
            conf = _confusion(y_te, pred_te, k)
            confusion += conf
            per["C"].append(float(c))
            per["train_accuracy"].append(float((pred_tr == y_tr).double().mean()))
            per["test_accuracy"].append(float(conf.diag().sum()) / max(1, int(conf.sum())))
            per["mean_class_accuracy"].append(_mean_class_accuracy(conf))
        results[key] = LayerProbe(
            layer=key, name=full_name, dims=int(feats[key].shape[1]), confusion=confusion,
            converged=converged, **per,
        )
    return ProbeResult(
        layers=results,
        classes=names,
        classifier=classifier,
        pooling=pooling,
        grid=grid,
        splits=splits,
        train_per_class=train_per_class,
        num_train=[int(tr.numel()) for tr, _ in plans],
        num_test=[int(te.numel()) for _, te in plans],
        seconds={"features": features_s, "solve": time.perf_counter() - started},
    )


# ------------------------------------------------------------------------------------ internals
def _resolve_layers(model: nn.Module, layers: Sequence[str | nn.Module]) -> tuple[list[str], list[tuple[str, nn.Module]]]:
    resolved = [resolve_layer(model, layer) for layer in layers]
    keys = [layer if isinstance(layer, str) else name for layer, (name, _) in zip(layers, resolved)]
    if len({name for name, _ in resolved}) != len(resolved):
        raise ValueError(f"layers lists a layer twice: {keys}")
    return keys, resolved


def _pool(out: torch.Tensor, pooling: str, grid: int, key: str) -> torch.Tensor:
    """A layer's output ``[N, C, H, W]`` (or ``[N, C]``) as ``[N, D]`` features."""
    if out.dim() == 2:
        return out.detach()
    if out.dim() != 4:
        raise ValueError(f"layer={key!r} outputs shape {tuple(out.shape)}; a probe needs [N, C, H, W] or [N, C]")
    out = out.detach()
    if pooling == "grid":
        return F.adaptive_avg_pool2d(out, grid).flatten(1)
    if pooling == "avg":
        return out.mean(dim=(2, 3))
    if pooling == "max":
        return out.amax(dim=(2, 3))
    return out.flatten(1)


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("dataset items must be (image tensor, label) tuples: a probe needs the labels")
    return batch[0], torch.as_tensor(batch[1])


def _class_names(dataset: Any, arg: str) -> list[str] | None:
    names = getattr(dataset, "classes", None)
    return None if names is None else [str(n) for n in names]


def _check_same_classes(train: list[str] | None, test: list[str] | None) -> None:
    if train is None or test is None or train == test:
        return
    only_train = [c for c in train if c not in test]
    only_test = [c for c in test if c not in train]
    if not only_train and not only_test:
        raise ValueError("test: its classes are train's in another order; the labels would not match")
    parts = []
    if only_train:
        parts.append(f"only in train: {', '.join(only_train[:5])}{' ...' if len(only_train) > 5 else ''}")
    if only_test:
        parts.append(f"only in test: {', '.join(only_test[:5])}{' ...' if len(only_test) > 5 else ''}")
    raise ValueError(f"test: its classes differ from train's ({'; '.join(parts)})")


def _kept_classes(classes: list[str] | None, drop: Sequence[str]) -> list[int]:
    """The labels kept after ``drop``, in order (for unnamed classes: every label seen later)."""
    drop = [drop] if isinstance(drop, str) else list(drop)
    if classes is None:
        if drop:
            raise ValueError("drop_class: the data set has no class names (no .classes) to drop by")
        return []
    for name in drop:
        if name not in classes:
            close = difflib.get_close_matches(name, classes, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"drop_class: {name!r} is not a class of the data set{hint}")
    return [i for i, name in enumerate(classes) if name not in drop]


def _targets(dataset: Any) -> list[int] | None:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)  # zflight.sources.ImageFiles
    if targets is None:
        return None
    return [int(t) for t in targets]


def _indices_of_classes(dataset: Any, keep: list[int]) -> list[int]:
    n = len(dataset)
    targets = _targets(dataset)
    if not keep or targets is None or len(targets) != n:
        return list(range(n))
    wanted = set(keep)
    return [i for i, t in enumerate(targets) if t in wanted]


def _relabel(
    feats: dict[str, torch.Tensor], labels: torch.Tensor, keep: list[int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Labels as positions in ``keep``; rows of other classes are cut (a data set without
    ``.targets`` had them extracted). An empty ``keep`` (no class names) is filled with the
    labels seen."""
    if not keep:
        keep.extend(sorted(set(labels.tolist())))
    lookup = torch.full((max(max(keep), int(labels.max())) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(keep)] = torch.arange(len(keep))
    out = lookup.to(labels.device)[labels]
    kept = out >= 0
    if bool(kept.all()):
        return feats, out
    return {k: v[kept] for k, v in feats.items()}, out[kept]


def _check_two_classes(labels: torch.Tensor, names: list[str]) -> None:
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        raise ValueError(f"train: a probe needs at least two classes; the images hold one ({only})")


def _draw_splits(
    labels: torch.Tensor,
    test_labels: torch.Tensor | None,
    per_class: int | None,
    test_cap: int | None,
    splits: int,
    seed: int,
    names: list[str],
    *,
    check_only: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(train rows, test rows)]`` per split; test rows index ``test_labels`` when given.

    ``check_only`` checks that the training images suffice, and stops there."""
    cpu = labels.cpu()
    counts = torch.bincount(cpu, minlength=len(names))
    if per_class is not None:
        need = per_class + (1 if test_labels is None else 0)
        short = [(names[c], int(n)) for c, n in enumerate(counts.tolist()) if 0 < n < need]
        if short:
            name, n = min(short, key=lambda t: t[1])
            rest = " (the rest of each class is its test set)" if test_labels is None else ""
            raise ValueError(f"train_per_class={per_class} is more than class {name!r} can give: it holds "
                             f"{n} images{rest}")
    if check_only:
        return []
    fixed_test = None
    if test_labels is not None:
        t = test_labels.cpu()
        rows = [torch.nonzero(t == c).flatten() for c in range(len(names))]
        if test_cap is not None:
            rows = [r[:test_cap] for r in rows]
        fixed_test = torch.cat(rows).sort().values
        if fixed_test.numel() == 0:
            raise ValueError("test: holds no image of the kept classes")
    plans = []
    for s in range(splits):
        if per_class is None:
            plans.append((torch.arange(cpu.numel()), fixed_test))
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + s)
        tr, te = [], []
        for c in range(len(names)):
            rows = torch.nonzero(cpu == c).flatten()
            rows = rows[torch.randperm(rows.numel(), generator=g)]
            tr.append(rows[:per_class])
            rest = rows[per_class:]
            te.append(rest if test_cap is None else rest[:test_cap])
        train_rows = torch.cat(tr).sort().values
        plans.append((train_rows, fixed_test if fixed_test is not None else torch.cat(te).sort().values))
    return [(tr.to(labels.device), te.to(labels.device)) for tr, te in plans]


def _confusion(truth: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    flat = truth.cpu().long() * k + pred.cpu().long()
    return torch.bincount(flat, minlength=k * k).view(k, k)


def _mean_class_accuracy(conf: torch.Tensor) -> float:
    """The mean over the classes with test images of the share of them predicted right."""
    support = conf.sum(dim=1)
    has = support > 0
    return float((conf.diag()[has].double() / support[has].double()).mean())




def _progress(loader: DataLoader, show: bool, total: int) -> Any:
    if not show:
        yield from loader
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="probe features", unit="img", leave=False) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))
