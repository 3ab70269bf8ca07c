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
squared norm).

Why it is fast: plain L-BFGS on these problems is slow because the features are strongly
correlated (the Hessian ``I + C X^T D X`` has a condition number of 10^3-10^4 on a probe's
1,024 ReLU features), so it took 500-900 iterations. :class:`_RowBasis` first rotates the
features into the eigenbasis of their Gram matrix, ``X V`` with ``V^T X^T X V = diag(s^2)``,
and L-BFGS then runs on ``u = z / p`` with ``p = (1 + a C s^2)^(-1/2)`` (``a`` the largest
curvature of one sample's loss: 2 for the squared hinge, 1/4 for the logistic), where the
Hessian is close to the identity: 10-20x fewer iterations (``benchmarks/probe.py``). This is an
exact change of variables, not an approximation: ``V`` is orthonormal, so ``||w||^2 =
||z||^2`` and the objective is the same function; and the optimal ``w`` lies in the span of
the rows of ``X`` (every gradient of the loss does), so when there are fewer rows than features
``V`` need only span those rows, and the problem shrinks to ``min(N, D)`` dimensions. The basis
costs one eigendecomposition of the smaller Gram matrix, shared by every ``C`` that
:func:`cross_validate` tries on a fold.

:func:`standardize` (zero mean, unit variance per feature, from the training rows, as
``StandardScaler``) is applied by the caller; :func:`cross_validate` picks ``C``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        tol: stop when every entry of the gradient in the preconditioned coordinates (where
            the Hessian is close to the identity, so the gradient measures the distance to the
            optimum) is below this. At the default the coefficients agree with a solve to
            1e-10 to about 1e-5 relative on the probes' features.
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
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [N, D] and labels [N]; got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    x = features.double()
    y = labels.to(x.device).long()
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    _check(loss, C, k)
    return _fit(_RowBasis.of(x), y, loss=loss, C=float(C), k=k, tol=tol, max_iter=max_iter, init=init)


def _check(loss: str, C: float, k: int) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not C > 0:
        raise ValueError(f"C must be a number > 0, got {C!r}")
    if k < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {k}")


@dataclass(frozen=True)
class _RowBasis:
    """The features in an orthonormal eigenbasis of their row space: ``coords = X @ basis``.

    Attributes:
        coords: ``[N, r]`` the features' coordinates, ``r <= min(N, D)``.
        basis: ``[D, r]`` orthonormal columns spanning the rows of ``X``.
        sq_scale: ``[r]`` the squared length of ``X`` along each column (its eigenvalues of
            ``X^T X``), for the preconditioner.
    """

    coords: torch.Tensor
    basis: torch.Tensor
    sq_scale: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> _RowBasis:
        n, d = x.shape
        if n >= d:
            sq_scale, basis = torch.linalg.eigh(x.T @ x)
        else:
            # Fewer rows than features: the eigenvectors u of the N x N Gram matrix give the row
            # space's directions, X^T u / s. Directions of (numerically) zero length (repeated
            # rows, dead features) are not in the row space: X^T u there is rounding noise, so
            # they are left out. At 1e-10 of the largest the cut is far above eigh's error (about
            # 1e-13 of it), and the optimum's part along a direction scales with its length, so
            # what is cut is below 1e-5 of the weights. QR then re-orthonormalizes the rest to
            # machine precision, largest first so that it moves them least, which keeps
            # ||w|| = ||z|| exact.
            sq_scale, u = torch.linalg.eigh(x @ x.T)
            keep = (sq_scale > 1e-10 * sq_scale.max()).nonzero().flatten().flip(0)
            sq_scale, u = sq_scale[keep], u[:, keep]
            basis = torch.linalg.qr(x.T @ u).Q
        return cls(coords=x @ basis, basis=basis, sq_scale=sq_scale.clamp_min(0.0))


# The largest curvature of one sample's loss in its score, which sets the preconditioner:
# the squared hinge's is 2, the logistic's 1/4 (softmax's is at most 1/2; 1/4 measured as good).
_CURVATURE = {"svm": 2.0, "logistic": 0.25}


def _fit(
    basis: _RowBasis,
    y: torch.Tensor,
    *,
    loss: str,
    C: float,
    k: int,
    tol: float,
    max_iter: int,
    init: LinearClassifier | None,
) -> LinearClassifier:
    """L-BFGS on the preconditioned coordinates ``u`` of ``w = basis @ (p * u)``."""
    x = basis.coords
    rows = 1 if k == 2 else k
    a = _CURVATURE[loss]
    scale = (1.0 + a * C * basis.sq_scale).rsqrt()
    bias_scale = (1.0 + a * C * x.shape[0]) ** -0.5  # the intercept's "feature" is a column of ones
    u = torch.zeros(rows, x.shape[1], dtype=torch.float64, device=x.device)
    v = torch.zeros(rows, dtype=torch.float64, device=x.device)
    if init is not None and tuple(init.weight.shape) == (rows, basis.basis.shape[0]):
        u.copy_(init.weight.to(x) @ basis.basis / scale)
        v.copy_(init.bias.to(x) / bias_scale)
    objective = _objective(loss, x, y, k, C)

    def evaluate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The objective at ``(u, v)`` and its gradients in ``u`` and ``v`` (chain rule: times the scales)."""
        value, grad_w, grad_b = objective(u * scale, v * bias_scale)
        return value, grad_w * scale, grad_b * bias_scale

    optimizer = torch.optim.LBFGS(
        [u, v],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4 + 10,
        tolerance_grad=tol,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    # Scale of the problem, for judging convergence where float64 can go no further.
    start = _largest(evaluate()[1:])

    def closure() -> torch.Tensor:
        value, u.grad, v.grad = evaluate()  # LBFGS reads .grad; no autograd graph is needed
        return value

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    # The gradient at the point L-BFGS stopped (its last evaluation may be a rejected step).
    grad_max = _largest(evaluate()[1:])
    return LinearClassifier(
        loss=loss,
        C=C,
        weight=(u * scale) @ basis.basis.T,
        bias=v * bias_scale,
        num_classes=k,
        iterations=int(state.get("n_iter", 0)),
        converged=grad_max <= max(tol, 1e-8 * start),
    )


def _largest(grads: Sequence[torch.Tensor]) -> float:
    """The largest gradient entry (0 for an empty tensor: features with no variance at all)."""
    return max((float(g.abs().max()) for g in grads if g.numel()), default=0.0)


Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _objective(loss: str, x: torch.Tensor, y: torch.Tensor, k: int, C: float) -> Objective:
    """``(weight, bias) -> (C * summed loss + 0.5 * penalty, its gradient in weight, in bias)``.

    The gradients are written out rather than taken by autograd: the same numbers (to rounding),
    without building a graph at every one of L-BFGS's evaluations, which made the small solves
    (300 images, 96-384 features) 1.3-1.9x slower (``benchmarks/probe.py``). All three losses
    are a function of the scores ``z = x w^T + b``, so each gives ``dL/dz`` and shares the rest.
    """
    if loss == "logistic" and k == 2:
        target = y.double()[None, :]

        def dloss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # binary: one row
            return C * (F.softplus(z) - target * z).sum(), C * (torch.sigmoid(z) - target)
    elif loss == "logistic":
        onehot = F.one_hot(y, k).double().T.contiguous()

        def dloss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # softmax cross-entropy
            lse = z.logsumexp(dim=0, keepdim=True)
            return C * (lse.sum() - (z * onehot).sum()), C * ((z - lse).exp() - onehot)
    else:
        signs = (2.0 * y.double() - 1.0)[None, :] if k == 2 else (F.one_hot(y, k).double() * 2.0 - 1.0).T.contiguous()

        def dloss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # squared hinge, one vs rest
            slack = (1.0 - signs * z).clamp_min(0.0)
            return C * slack.pow(2).sum(), -2.0 * C * signs * slack

    penalize_bias = loss == "svm"  # LinearSVC's intercept_scaling feature; LogisticRegression's is free

    def objective(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Scores as [K, N], w @ x^T: with x stored [N, D] this product (and dz @ x below) runs
        # about twice as fast on the CPU as x @ w^T (MKL, 1,000 x 1,024 features); same numbers.
        value, dz = dloss(torch.addmm(b[:, None], w, x.T))
        value = value + 0.5 * w.pow(2).sum()
        grad_w = dz @ x + w
        grad_b = dz.sum(dim=1)
        if penalize_bias:
            value = value + 0.5 * b.pow(2).sum()
            grad_b = grad_b + b
        return value, grad_w, grad_b

    return objective


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
    for c in Cs:
        _check(loss, c, num_classes)
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
        y_in, y_out = labels[held_in].to(x_in.device).long(), labels[held_out]
        basis = _RowBasis.of(x_in)  # one eigendecomposition per fold, for every C
        previous = None
        for c in Cs:
            previous = _fit(basis, y_in, loss=loss, C=c, k=num_classes, tol=tol, max_iter=max_iter, init=previous)
            totals[c] += float((previous.predict(x_out) == y_out.to(x_out.device)).double().mean())
    scores = {c: totals[c] / folds for c in Cs}
    best = max(scores.values())
    return next(c for c in Cs if scores[c] >= best - 1e-12), scores
