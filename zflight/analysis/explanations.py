"""Score attribution methods on images whose objects are known: one loop for the CLI and callback.

:func:`score_methods` runs each method of :data:`zflight.attribution.methods.METHODS` on a batch
of images, batch after batch, and scores every map with the metrics of
:mod:`zflight.analysis.evaluation` against the objects' masks:

- localization: ``pointing_game``, ``relevance_mass``, ``relevance_rank`` (higher is better);
- faithfulness: ``deletion_auc`` (lower is better; the removed pixels get the baseline 0, the
  data mean in the normalized input) and ``insertion_auc`` (higher is better; pixels are revealed
  on a blurred copy of the image, RISE's insertion baseline).

``python -m zflight evaluate`` (:mod:`zflight.cli.evaluate`) and the
:class:`~zflight.callbacks.explanations.ExplanationScores` callback both call it, so a score
logged during training and one printed from a checkpoint are the same number.

A map that points nowhere. Grad-CAM is rectified, so on an image whose target the last
convolution sees no evidence for, its map is all zero; the metrics refuse such a map (it has no
maximum and no ranking). Dropping those images would flatter the method (they are mostly the
hard ones), so an all-zero map is scored as a *constant* map: every pixel tied, which under the
metrics' tie rule is the chance level (pointing game and rank ``|mask| / (H W)``, mass likewise,
pixels deleted in row-major order). :attr:`ScoreTable.empty` counts them per method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from zflight.analysis.evaluation import (
    perturbation_curves,
    pointing_game,
    relevance,
    relevance_mass,
    relevance_rank,
)
from zflight.attribution.methods import METHODS, attribute

__all__ = [
    "LOCALIZATION",
    "FAITHFULNESS",
    "METRICS",
    "HIGHER_IS_BETTER",
    "ScoreTable",
    "check_names",
    "score_methods",
]

LOCALIZATION: tuple[str, ...] = ("pointing_game", "relevance_mass", "relevance_rank")
FAITHFULNESS: tuple[str, ...] = ("deletion_auc", "insertion_auc")
METRICS: tuple[str, ...] = LOCALIZATION + FAITHFULNESS
HIGHER_IS_BETTER: dict[str, bool] = {
    "pointing_game": True,
    "relevance_mass": True,
    "relevance_rank": True,
    "deletion_auc": False,
    "insertion_auc": True,
}

_LOCALIZE = {
    "pointing_game": pointing_game,
    "relevance_mass": relevance_mass,
    "relevance_rank": relevance_rank,
}
# RISE (Petsiuk et al., 2018): delete to a constant, insert on a blurred image.
_BASELINES = {"deletion_auc": "zeros", "insertion_auc": "blur"}
# Perturbed images per forward pass of the deletion / insertion curves.
_FORWARD_BATCH = 256


@dataclass
class ScoreTable:
    """Per-image scores of several attribution methods, and their summary.

    Attributes:
        methods: the methods, in the order they were run.
        metrics: the metrics, in the order they were computed.
        scores: ``scores[method][metric]``: ``[N]`` float64, one score per image.
        empty: ``empty[method]``: how many of its maps were all zero (scored as constant maps).
        fractions: ``[steps + 1]`` the fractions of the deletion / insertion curves (empty when
            neither was computed).
        curves: ``curves[method][metric]``: ``[N, steps + 1]`` target probabilities along the
            deletion or insertion curve, for the faithfulness metrics computed.
        maps: ``maps[method]``: ``[K, H, W]`` relevance ``r = sum_c |a_c|`` of the first ``K``
            images (``keep_maps``), for figures.
        targets: ``[N]`` the target classes.
        baselines: the perturbation baseline of each faithfulness metric.
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    scores: dict[str, dict[str, torch.Tensor]]
    empty: dict[str, int]
    fractions: torch.Tensor
    curves: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    baselines: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """Return ``{method: {metric: {"mean", "sem", "n"}}}``.

        ``sem`` is the standard error of the mean, ``std / sqrt(n)`` with the sample standard
        deviation (``n - 1``); NaN for ``n = 1``.

        Example:
            >>> t = ScoreTable(("random",), ("pointing_game",),
            ...                {"random": {"pointing_game": torch.tensor([0.0, 1.0])}},
            ...                {"random": 0}, torch.empty(0))
            >>> t.summary()["random"]["pointing_game"]
            {'mean': 0.5, 'sem': 0.5, 'n': 2}
        """
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        for method in self.methods:
            out[method] = {}
            for metric in self.metrics:
                v = self.scores[method][metric].double()
                n = int(v.numel())
                sem = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
                out[method][metric] = {"mean": float(v.mean()), "sem": sem, "n": n}
        return out

    def markdown(self, digits: int = 3) -> str:
        """Return the summary as a Markdown table: one row per method, ``mean ± sem`` per metric.

        The header marks each metric ``↑`` (higher is better) or ``↓``; the last column is the
        number of images.

        Example:
            >>> print(table.markdown())  # doctest: +SKIP
        """
        summary = self.summary()
        head = [f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in self.metrics]
        lines = [
            "| method | " + " | ".join(head) + " | N |",
            "|---|" + "---|" * len(self.metrics) + "---|",
        ]
        for method in self.methods:
            cells = []
            for metric in self.metrics:
                s = summary[method][metric]
                sem = "–" if math.isnan(s["sem"]) else f"{s['sem']:.{digits}f}"
                cells.append(f"{s['mean']:.{digits}f} ± {sem}")
            n = summary[method][self.metrics[0]]["n"] if self.metrics else 0
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {n} |")
        return "\n".join(lines)


def check_names(
    values: Sequence[str], valid: Sequence[str], argument: str, kind: str
) -> list[str]:
    """Return ``values`` as a list after checking each is in ``valid`` and none repeats.

    Args:
        values: the names given.
        valid: the names that exist.
        argument: how the argument is called in the message (``"--methods"``, ``"methods"``).
        kind: what a name is (``"method"``, ``"metric"``).

    Returns:
        The names, in the given order.

    Raises:
        ValueError: an unknown name (the message gives the close match and lists the valid
            ones), a repeated name, or no name at all.

    Example:
        >>> check_names(["saliency"], list(METHODS), "methods", "method")
        ['saliency']
    """
    import difflib

    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{argument} must be a non-empty list of {kind} names, got {values!r}")
    for v in values:
        if not isinstance(v, str) or v not in valid:
            close = difflib.get_close_matches(str(v), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{argument}: {kind} {v!r} does not exist{hint}; valid {kind}s: {', '.join(valid)}"
            )
    repeated = sorted({v for v in values if list(values).count(v) > 1})
    if repeated:
        raise ValueError(f"{argument}: {', '.join(repeated)} given more than once")
    return list(values)


def score_methods(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor | None,
    methods: Sequence[str] = tuple(METHODS),
    metrics: Sequence[str] = METRICS,
    *,
    steps: int = 32,
    batch_size: int = 50,
    keep_maps: int = 0,
    progress: bool = False,
) -> ScoreTable:
    """Run each method on ``images`` in batches and score its maps against ``masks``.

    Maps come from :func:`zflight.attribution.methods.attribute` (eval mode; the model's flags
    and hooks are restored). Every metric of a batch is computed before the next batch is read,
    so memory holds one batch of maps and the per-image scores, whatever ``N``.

    Args:
        model: a classifier returning logits ``[B, classes]``.
        images: ``[N, C, H, W]`` in the model's input space.
        targets: ``[N]`` integer target classes (e.g. the true labels).
        masks: ``[N, H, W]`` bool, the objects' pixels; ``None`` when there are none, with only
            faithfulness metrics (which need no mask).
        methods: names in :data:`~zflight.attribution.methods.METHODS`.
        metrics: names in :data:`METRICS`.
        steps: steps of the deletion / insertion curves.
        batch_size: images whose maps are computed together (their perturbed images go through
            the model 256 at a time).
        keep_maps: keep the relevance of the first ``keep_maps`` images' maps (for a figure).
        progress: show a progress bar over the images.

    Returns:
        A :class:`ScoreTable`.

    Raises:
        ValueError: an unknown method or metric (the valid ones listed), shapes that disagree,
            a bad ``steps``, ``batch_size`` or ``keep_maps``, a localization metric without
            ``masks``; what a method raises (e.g. a model
            without ``Conv2d`` for ``gradcam``).

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> masks = torch.zeros(2, 64, 64, dtype=torch.bool); masks[:, 20:40, 20:40] = True
        >>> t = score_methods(model, torch.randn(2, 3, 64, 64), torch.tensor([1, 2]), masks,
        ...                   ["random"], ["pointing_game"])
        >>> t.scores["random"]["pointing_game"].shape
        torch.Size([2])
    """
    methods = check_names(methods, list(METHODS), "methods", "method")
    metrics = check_names(metrics, list(METRICS), "metrics", "metric")
    for name, value, least in (("steps", steps, 1), ("batch_size", batch_size, 1), ("keep_maps", keep_maps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("images must be a floating [N, C, H, W] tensor")
    n, _, h, w = images.shape
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be a tensor [N={n}] of classes")
    if masks is None:
        need = [m for m in metrics if m in LOCALIZATION]
        if need:
            raise ValueError(f"masks: {', '.join(need)} score maps against object masks; none were given")
    elif not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or tuple(masks.shape) != (n, h, w):
        raise ValueError(f"masks must be a bool tensor [N={n}, H={h}, W={w}]")

    device = images.device
    targets = targets.to(device=device, dtype=torch.int64)
    masks = masks.to(device) if masks is not None else None
    per: dict[str, dict[str, list[torch.Tensor]]] = {m: {k: [] for k in metrics} for m in methods}
    curves: dict[str, dict[str, list[torch.Tensor]]] = {
        m: {k: [] for k in metrics if k in FAITHFULNESS} for m in methods
    }
    kept: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    empty = dict.fromkeys(methods, 0)
    fractions = torch.empty(0, dtype=torch.float64)
    with tqdm(total=n, desc="evaluate", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size]
            t = targets[start : start + batch_size]
            m = masks[start : start + batch_size] if masks is not None else None
            for method in methods:
                maps = attribute(method, model, x, t)
                r = relevance(maps.double())
                zero = r.flatten(1).amax(dim=1) == 0
                empty[method] += int(zero.sum())
                # A map that points nowhere is scored as a constant map: chance (module docstring).
                r = torch.where(zero[:, None, None], torch.ones_like(r), r)
                for metric in metrics:
                    if metric in _LOCALIZE:
                        per[method][metric].append(_LOCALIZE[metric](r, m).cpu())
                        continue
                    mode = "deletion" if metric == "deletion_auc" else "insertion"
                    c = perturbation_curves(
                        model, x, r, t, mode=mode, steps=steps, baseline=_BASELINES[metric],
                        batch_size=_FORWARD_BATCH, progress=False,
                    )
                    per[method][metric].append(c.auc.double().cpu())
                    curves[method][metric].append(c.probs.cpu())
                    fractions = c.fractions.double().cpu()
                have = sum(k.shape[0] for k in kept[method])
                if have < keep_maps:
                    kept[method].append(r[: keep_maps - have].float().cpu())
            bar.update(x.shape[0])
    return ScoreTable(
        methods=tuple(methods),
        metrics=tuple(metrics),
        scores={m: {k: torch.cat(v).double() for k, v in d.items()} for m, d in per.items()},
        empty=empty,
        fractions=fractions,
        curves={m: {k: torch.cat(v) for k, v in d.items()} for m, d in curves.items()},
        maps={m: torch.cat(v) if v else torch.empty(0, h, w) for m, v in kept.items()},
        targets=targets.cpu(),
        baselines={k: _BASELINES[k] for k in metrics if k in _BASELINES},
    )
