"""Linear classifiers on fixed features, in plain torch: the solvers behind the linear probes.

Two L2-regularized losses, each the objective of the scikit-learn estimator it is checked
against (``tests/analysis/test_probe.py``), solved to convergence by full-batch L-BFGS with a
strong-Wolfe line search (``torch.optim.LBFGS``) on the features' device, in float64:

- ``"logistic"``: multinomial logistic regression (softmax),
  ``C * sum_i -log p(y_i | x_i) + 0.5 * ||W||^2``, intercept not penalized:
  ``LogisticRegression(solver="lbfgs")``. With two classes it is one binary logistic
  regression (one weight vector, class 1 positive), as scikit-learn fits it.
- ``"svm"``: one-vs-rest linear SVM with the squared hinge,
  ``0.5 * (||w_k||^2 + b_k^2) + C * sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2`` per class
  ``k`` (``y_ik = +1`` for class ``k``, else ``-1``): ``LinearSVC()`` with its default
  ``intercept_scaling=1``, which appends a constant feature 1 and so penalizes the intercept
  like any weight. With two classes, one classifier (class 1 positive), as ``LinearSVC``.

The objective is written as scikit-learn writes it (``C`` times the summed loss plus half the
squared norm): it is 1-strongly convex, so a gradient of norm ``g`` leaves the weights at most
``g`` from the optimum, and ``tol`` bounds the error of the coefficients directly.

:func:`standardize` (zero mean, unit variance per feature, from the training rows, as
``StandardScaler``) is applied by the caller; :func:`cross_validate` picks ``C``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "C_GRID",
    "LOSSES",
    "LinearClassifier",
    "cross_validate",
    "fit_linear_classifier",
    "standardize",
    "stratified_folds",
]

Loss = Literal["logistic", "svm"]
LOSSES: tuple[str, ...] = ("logistic", "svm")

#: The values of ``C`` cross-validation tries by default (standardized features; ``C`` multiplies
#: the summed loss, so small data sets prefer the larger values).
C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class LinearClassifier:
    """A fitted linear classifier: ``scores = features @ weight.T + bias``.

    Attributes:
        loss: ``"logistic"`` or ``"svm"``.
        C: the inverse regularization strength it was fitted with.
        weight: ``[K, D]`` float64 (``[1, D]`` for two classes: class 1 positive, as
            scikit-learn's ``coef_``).
        bias: ``[K]`` float64 (``intercept_``).
        num_classes: the number of classes ``K`` (2 when ``weight`` has one row).
        iterations: L-BFGS iterations used.
        converged: the gradient fell below the tolerance (or below 1e-8 of its initial size,
            where float64 rounding stops L-BFGS) within ``max_iter`` iterations.
    """

    loss: str
    C: float
    weight: torch.Tensor
    bias: torch.Tensor
    num_classes: int
    iterations: int
    converged: bool

    def decision(self, features: torch.Tensor) -> torch.Tensor:
        """The scores ``[N, K]`` of ``features`` ``[N, D]`` (``[N, 1]`` for two classes)."""
        return features.to(self.weight) @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted class of each row of ``features``: ``[N]`` int64."""
        scores = self.decision(features)
        if scores.shape[1] == 1:
            return (scores[:, 0] > 0).long()
        return scores.argmax(dim=1)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scale every feature to zero mean and unit variance over the rows of ``train``.

    As scikit-learn's ``StandardScaler``: the population standard deviation (``ddof=0``), and a
    constant feature is centred but not scaled. ``others`` (the test rows) use ``train``'s mean
    and deviation. Computed in float64.

    Example:
        >>> tr, te = standardize(torch.tensor([[0.0], [2.0]]), torch.tensor([[4.0]]))
        >>> tr.flatten().tolist(), te.flatten().tolist()
        ([-1.0, 1.0], [3.0])
    """
    train = train.double()
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple((x.double() - mean) / std for x in (train, *others))


def fit_linear_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: Loss = "svm",
    C: float = 1.0,
    num_classes: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    init: LinearClassifier | None = None,
) -> LinearClassifier:
    """Fit an L2-regularized linear classifier by full-batch L-BFGS; see the module docstring.

    Args:
        features: ``[N, D]`` (standardize them first; see :func:`standardize`).
        labels: ``[N]`` class indices in ``[0, num_classes)``.
        loss: ``"logistic"`` (softmax) or ``"svm"`` (one-vs-rest squared hinge).
        C: inverse regularization strength (scikit-learn's ``C``), > 0.
        num_classes: ``K``; ``labels.max() + 1`` when ``None``.
        tol: stop when every gradient entry is below this (the objective is 1-strongly
            convex, so the weights are then within about ``tol * sqrt(K * D)`` of the optimum).
        max_iter: L-BFGS iterations at most.
        init: a previous solution of the same shape to start from (warm start).

    Returns:
        A :class:`LinearClassifier` in float64 on the features' device.

    Raises:
        ValueError: a bad ``loss``, ``C``, shapes, or fewer than two classes.

    Example:
        >>> x = torch.randn(60, 5); y = torch.arange(60) % 3
        >>> clf = fit_linear_classifier(*standardize(x), y, loss="logistic", C=1.0)
        >>> clf.weight.shape, clf.predict(standardize(x)[0]).shape
        (torch.Size([3, 5]), torch.Size([60]))
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not C > 0:
        raise ValueError(f"C must be a number > 0, got {C!r}")
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [N, D] and labels [N]; got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    x = features.double()
    y = labels.to(x.device).long()
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {k}")
    rows = 1 if k == 2 else k
    weight = torch.zeros(rows, x.shape[1], dtype=torch.float64, device=x.device)
    bias = torch.zeros(rows, dtype=torch.float64, device=x.device)
    if init is not None and tuple(init.weight.shape) == tuple(weight.shape):
        weight.copy_(init.weight)
        bias.copy_(init.bias)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    objective = _objective(loss, x, y, k, float(C))
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4 + 10,
        tolerance_grad=tol,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    # Scale of the problem, for judging convergence where float64 can go no further.
    start = max(float(g.abs().max()) for g in torch.autograd.grad(objective(weight, bias), [weight, bias]))

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        value = objective(weight, bias)
        value.backward()
        return value

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    # The gradient at the point L-BFGS stopped (its last evaluation may be a rejected step).
    grads = torch.autograd.grad(objective(weight, bias), [weight, bias])
    grad_max = max(float(g.abs().max()) for g in grads)
    return LinearClassifier(
        loss=loss,
        C=float(C),
        weight=weight.detach(),
        bias=bias.detach(),
        num_classes=k,
        iterations=int(state.get("n_iter", 0)),
        converged=grad_max <= max(tol, 1e-8 * start),
    )


def _objective(loss: str, x: torch.Tensor, y: torch.Tensor, k: int, C: float):
    """``(weight, bias) -> C * summed loss + 0.5 * penalty`` for ``loss`` on ``(x, y)``."""
    if loss == "logistic":
        if k == 2:
            target = y.double()

            def logistic_binary(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                z = x @ w[0] + b[0]
                return C * F.binary_cross_entropy_with_logits(z, target, reduction="sum") + 0.5 * w.pow(2).sum()

            return logistic_binary

        def logistic(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return C * F.cross_entropy(x @ w.T + b, y, reduction="sum") + 0.5 * w.pow(2).sum()

        return logistic

    if k == 2:
        signs = (2.0 * y.double() - 1.0)[:, None]
    else:
        signs = F.one_hot(y, k).double() * 2.0 - 1.0

    def svm(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        slack = (1.0 - signs * (x @ w.T + b)).clamp_min(0.0)
        return C * slack.pow(2).sum() + 0.5 * (w.pow(2).sum() + b.pow(2).sum())

    return svm


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Assign each row to one of ``folds`` folds, every class spread evenly: ``[N]`` int64.

    Within each class the rows are shuffled (seeded) and dealt round-robin, so a class of
    ``m`` rows puts ``floor(m / folds)`` or one more in each fold.

    Example:
        >>> stratified_folds(torch.tensor([0, 0, 1, 1]), 2).sort().values.tolist()
        [0, 0, 1, 1]
    """
    labels = labels.cpu().long()
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(rows.numel(), generator=g)]
        fold[rows] = torch.arange(rows.numel()) % folds
    return fold


def cross_validate(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: Loss,
    num_classes: int,
    Cs: Sequence[float] = C_GRID,
    folds: int = 3,
    seed: int = 0,
    tol: float = 1e-3,
    max_iter: int = 200,
) -> tuple[float, dict[float, float]]:
    """Pick ``C`` by stratified k-fold cross-validation on the training rows.

    Each fold's held-in rows are standardized on their own (the held-out rows with their
    statistics), the classifier is fitted for each ``C`` in increasing order (each warm-started
    from the previous), and scored by accuracy on the held-out rows. The best mean accuracy wins;
    ties go to the smallest ``C`` (the strongest regularization). The fits only rank the values
    of ``C``, so they stop early (``tol``, ``max_iter``). The number of folds is cut to
    the smallest class's count; below 2 there is nothing to hold out and the middle of ``Cs``
    is returned with no scores.

    Returns:
        ``(C, {C: mean held-out accuracy})``.

    Example:
        >>> x = torch.randn(60, 4); y = torch.arange(60) % 3; x[:, 0] += 3 * y
        >>> C, scores = cross_validate(x, y, loss="svm", num_classes=3)
        >>> scores[C] == max(scores.values())
        True
    """
    Cs = sorted(float(c) for c in Cs)
    if not Cs:
        raise ValueError("Cs is empty: give at least one value of C")
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes)
    present = counts[counts > 0]
    folds = min(int(folds), int(present.min()))
    if folds < 2:
        return Cs[len(Cs) // 2], {}
    fold = stratified_folds(labels, folds, seed).to(labels.device)
    totals = {c: 0.0 for c in Cs}
    for f in range(folds):
        held_in, held_out = fold != f, fold == f
        x_in, x_out = standardize(features[held_in], features[held_out])
        y_in, y_out = labels[held_in], labels[held_out]
        previous = None
        for c in Cs:
            previous = fit_linear_classifier(
                x_in, y_in, loss=loss, C=c, num_classes=num_classes, tol=tol, max_iter=max_iter, init=previous
            )
            totals[c] += float((previous.predict(x_out) == y_out.to(x_out.device)).double().mean())
    scores = {c: totals[c] / folds for c in Cs}
    best = max(scores.values())
    return next(c for c in Cs if scores[c] >= best - 1e-12), scores
