"""Does the network find the same object part in different images? (the paper's Table 1)

For images ``x_1 … x_N`` of one class and a mask per image that hides the same object part
(the paper: the right eye of five dogs), the occluded image is ``x̃_i`` (the mask's pixels set
to ``fill``) and ``ε_i = f_l(x_i) − f_l(x̃_i)`` is the change the occlusion causes in layer
``l``'s features. If the network represents the part the same way in every image, the changes
agree in sign across images. The paper's measure is

    Δ_l = Σ_{i≠j} H(sign ε_i, sign ε_j)

with these choices, which the paper leaves open:

- ``sign`` is three-valued (−1, 0, +1). A change counts as 0 when ``|ε| <= tol · max|f_l(x_i)|``
  (``tol=1e-6`` by default), so float noise in features the mask cannot reach is no change.
- ``H`` is the Hamming distance divided by the feature length ``D`` (the number of values in
  the flattened layer output): the share of features whose signs differ, in [0, 1].
- ``Σ_{i≠j}`` runs over ordered pairs, as written (each unordered pair twice). With ``n``
  images that is ``n(n−1)`` terms; ``delta_per_pair`` divides by it, so it does not grow with
  ``n``. Lower means more consistent.

Next to each part, the same measure for **random** occlusions of the same size: each image's
mask (of the first part, by default) moved to a random place, its shape kept, its bounding box
inside the image. The paper reports mean ± std; here the spread comes from ``repeats`` random
draws: each draw picks ``subset_size`` images from the pool (5 in the paper) and, for the
random row, new random mask positions. With a pool of exactly ``subset_size`` images the part
rows' std is 0 and the random row's std is over mask positions only.

The defaults name zfnet's ``relu5`` (conv5 after its ReLU, before pooling) and ``relu7`` (fc7
after its ReLU): the paper's layers 5 and 7.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zflight.attribution._layers import layer_label, layer_outputs, preserve_modes, resolve_layer

__all__ = [
    "Correspondence",
    "correspondence",
    "correspondence_delta",
    "sign_hamming",
    "keypoint_masks",
    "random_masks_like",
    "apply_masks",
    "feature_changes",
]


def sign_hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the normalized Hamming distance between the sign patterns of ``a`` and ``b``.

    ``H = mean(sign(a) != sign(b))`` over the last dimension (``sign`` is −1, 0 or +1), i.e.
    the share of positions whose signs differ.

    Args:
        a: ``[..., D]`` tensor (already thresholded if small values should count as 0).
        b: tensor broadcastable to ``a``.

    Returns:
        ``[...]`` values in [0, 1].

    Example:
        >>> sign_hamming(torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([5.0, 1.0, 0.0, 0.0]))
        tensor(0.5000)
    """
    return (torch.sign(a) != torch.sign(b)).float().mean(dim=-1)


def _pairwise_hamming(eps: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` normalized Hamming distances between the sign patterns of the rows of ``eps``."""
    s = torch.sign(eps.flatten(1)).to(torch.int8)
    n = s.shape[0]
    out = torch.zeros(n, n)
    for i in range(n):
        out[i] = (s != s[i]).float().mean(dim=1)
    return out


def correspondence_delta(eps: torch.Tensor, *, per_pair: bool = False) -> torch.Tensor:
    """Return the paper's ``Δ = Σ_{i≠j} H(sign ε_i, sign ε_j)`` over ordered pairs of rows.

    Args:
        eps: ``[N, ...]`` the feature change of each image (flattened per image).
        per_pair: divide by the ``N(N−1)`` ordered pairs (the mean pairwise distance).

    Returns:
        A scalar tensor; 0 when all sign patterns agree.

    Raises:
        ValueError: fewer than two images.

    Example:
        >>> eps = torch.tensor([[1.0, -1.0, 0.0, 2.0], [1.0, 1.0, 0.0, 2.0], [1.0, -1.0, 0.0, 2.0]])
        >>> correspondence_delta(eps)  # rows 0 and 2 agree; row 1 differs from each in 1 of 4
        tensor(1.)
    """
    if not isinstance(eps, torch.Tensor) or eps.dim() < 2 or eps.shape[0] < 2:
        raise ValueError(
            "eps must be a [N >= 2, ...] tensor (one feature change per image), got "
            + (str(tuple(eps.shape)) if isinstance(eps, torch.Tensor) else type(eps).__name__)
        )
    h = _pairwise_hamming(eps)
    total = h.sum() - h.diagonal().sum()
    n = eps.shape[0]
    return total / (n * (n - 1)) if per_pair else total


def keypoint_masks(
    dataset: Any, indices: Sequence[int], part: str, size: int, *, image_size: int | None = None
) -> torch.Tensor:
    """Return ``[N, H, W]`` square masks of side ``size`` centered on landmark ``part``.

    ``dataset.keypoints(i)`` must give ``{name: (x, y)}`` in pixels (as
    :meth:`zflight.data.ShapesDataset.keypoints` does). Squares are clipped at the border.

    Args:
        dataset: the data set, with ``keypoints(i)`` and ``image_size`` (or pass ``image_size``).
        indices: the images.
        part: the landmark name, the same for every image (e.g. ``"tip"`` of an arrow).
        size: the square's side in pixels.
        image_size: image height and width; ``None`` reads ``dataset.image_size``.

    Returns:
        A bool tensor, True where the image is hidden.

    Raises:
        ValueError: ``size < 1``, larger than the image, or an image without that landmark
            (the message lists the ones it has).

    Example:
        >>> ds = ShapesDataset(20)  # doctest: +SKIP
        >>> keypoint_masks(ds, [7, 17], "tip", 12).shape  # doctest: +SKIP
        torch.Size([2, 64, 64])
    """
    side = int(image_size if image_size is not None else dataset.image_size)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= side:
        raise ValueError(f"size must be an int in 1..{side} (the image side), got {size!r}")
    masks = torch.zeros(len(indices), side, side, dtype=torch.bool)
    for k, i in enumerate(indices):
        points = dataset.keypoints(i)
        if part not in points:
            raise ValueError(f"part={part!r} is not a landmark of image {i}; it has {', '.join(sorted(points))}")
        x, y = points[part]
        top, left = int(round(y - size / 2)), int(round(x - size / 2))
        masks[k, max(0, top) : max(0, top + size), max(0, left) : max(0, left + size)] = True
    return masks


def random_masks_like(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return each mask moved to a random place (same shape, bounding box inside the image).

    Args:
        masks: ``[N, H, W]`` bool masks (an empty mask stays empty).
        generator: the random source (seed it for repeatable draws).

    Returns:
        ``[N, H, W]`` bool masks with the same number of True pixels each.

    Example:
        >>> m = torch.zeros(1, 8, 8, dtype=torch.bool); m[0, :2, :2] = True
        >>> int(random_masks_like(m, torch.Generator().manual_seed(0)).sum())
        4
    """
    out = torch.zeros_like(masks)
    h, w = masks.shape[-2:]
    for k, m in enumerate(masks):
        rows, cols = m.any(dim=1).nonzero()[:, 0], m.any(dim=0).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        dy = int(torch.randint(-y0, h - y1 + 1, (1,), generator=generator))
        dx = int(torch.randint(-x0, w - x1 + 1, (1,), generator=generator))
        # The box stays inside, so a roll is a shift: nothing wraps around.
        out[k] = torch.roll(m, shifts=(dy, dx), dims=(0, 1))
    return out


def apply_masks(images: torch.Tensor, masks: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Return ``images`` with the masked pixels (all channels) set to ``fill``.

    Example:
        >>> apply_masks(torch.ones(1, 1, 2, 2), torch.tensor([[[True, False], [False, False]]]))
        tensor([[[[0., 1.],
                  [1., 1.]]]])
    """
    m = masks[:, None].to(images.device)
    return torch.where(m, torch.full_like(images, float(fill)), images)


@dataclass
class Correspondence:
    """Δ per row (each part, and ``"random"``), layer and random draw.

    Attributes:
        layers: the layers' full names.
        delta: row → layer → ``[repeats]`` the paper's Δ (sum over ordered pairs) per draw.
        subset_size: images per draw (``n``; Δ has ``n(n−1)`` terms).
        repeats: number of draws.
        num_images: images in the pool the draws pick from.
        subsets: ``[repeats, subset_size]`` the images (positions in the pool) of each draw.
    """

    layers: list[str]
    delta: dict[str, dict[str, torch.Tensor]]
    subset_size: int
    repeats: int
    num_images: int
    subsets: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        """The row names: the parts in the order given, then ``"random"``."""
        return list(self.delta)

    def mean(self, row: str, layer: str, *, per_pair: bool = False) -> float:
        """Mean Δ of ``row`` at ``layer`` over the draws (``per_pair``: divided by n(n−1))."""
        return float(self._values(row, layer, per_pair).mean())

    def std(self, row: str, layer: str, *, per_pair: bool = False) -> float:
        """Standard deviation (population, ``correction=0``) of Δ over the draws."""
        return float(self._values(row, layer, per_pair).std(correction=0))

    def _values(self, row: str, layer: str, per_pair: bool) -> torch.Tensor:
        name, _ = _match_layer(self.layers, layer)
        v = self.delta[row][name]
        n = self.subset_size
        return v / (n * (n - 1)) if per_pair else v

    def table(self, *, per_pair: bool = False, digits: int = 3) -> str:
        """Return a Markdown table: rows × layers, each cell ``mean ± std``.

        Example:
            >>> print(result.table())  # doctest: +SKIP
        """
        short = [layer_label(name) for name in self.layers]
        head = "| occlusion | " + " | ".join(f"Δ {s}" for s in short) + " |"
        lines = [head, "|" + "---|" * (len(short) + 1)]
        for row in self.rows:
            cells = [
                f"{self.mean(row, name, per_pair=per_pair):.{digits}f} ± {self.std(row, name, per_pair=per_pair):.{digits}f}"
                for name in self.layers
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return the numbers as a JSON-ready dict (per row and layer: mean, std, per draw).

        Example:
            >>> json.dumps(result.to_dict())  # doctest: +SKIP
        """
        pairs = self.subset_size * (self.subset_size - 1)
        return {
            "layers": self.layers,
            "subset_size": self.subset_size,
            "ordered_pairs": pairs,
            "repeats": self.repeats,
            "num_images": self.num_images,
            "subsets": self.subsets.tolist(),
            "rows": {
                row: {
                    name: {
                        "delta_mean": self.mean(row, name),
                        "delta_std": self.std(row, name),
                        "delta_per_pair_mean": self.mean(row, name, per_pair=True),
                        "delta_per_pair_std": self.std(row, name, per_pair=True),
                        "delta": self.delta[row][name].tolist(),
                    }
                    for name in self.layers
                }
                for row in self.rows
            },
            **self.meta,
        }


@torch.no_grad()
def feature_changes(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    layers: Sequence[str | nn.Module],
    *,
    fill: float = 0.0,
    tol: float = 1e-6,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Return layer → ``[N, D]`` ε = f(x) − f(x̃), with changes ``<= tol·max|f(x)|`` set to 0.

    Runs in eval mode (flags restored after), hooks removed even if the forward raises.

    Args:
        model: the network.
        images: ``[N, C, H, W]`` in the model's input space.
        masks: ``[N, H, W]`` bool, True = hidden.
        layers: layer names or modules.
        fill: value of hidden pixels (0.0: the data mean).
        tol: relative threshold below which a change counts as none.
        batch_size: images per forward pass.

    Returns:
        The flattened feature changes per layer (keys: full layer names), on the CPU.

    Example:
        >>> eps = feature_changes(model, x, masks, ["relu5"])  # doctest: +SKIP
    """
    resolved = [resolve_layer(model, layer) for layer in layers]
    device = _device(model, images)
    with preserve_modes(model, eval_mode=True):
        orig, _ = layer_outputs(model, resolved, images.to(device), batch_size, device="cpu")
        hidden, _ = layer_outputs(model, resolved, apply_masks(images, masks, fill).to(device), batch_size,
                                  device="cpu")
    out = {}
    for name, _ in resolved:
        eps = orig[name] - hidden[name]
        scale = orig[name].abs().amax(dim=1, keepdim=True)
        out[name] = torch.where(eps.abs() <= tol * scale, torch.zeros_like(eps), eps)
    return out


def correspondence(
    model: nn.Module,
    images: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    *,
    layers: Sequence[str | nn.Module] = ("relu5", "relu7"),
    fill: float = 0.0,
    subset_size: int = 5,
    repeats: int = 10,
    random_like: str | None = None,
    seed: int = 0,
    tol: float = 1e-6,
    batch_size: int = 64,
) -> Correspondence:
    """Return the paper's Table 1: Δ per part mask and for random masks, mean ± std over draws.

    Args:
        model: the network.
        images: ``[N, C, H, W]`` images of one class, in the model's input space.
        masks: part name → ``[N, H, W]`` bool masks (True = hidden), e.g. from
            :func:`keypoint_masks`.
        layers: layers whose feature changes are compared (zfnet's ``relu5``, ``relu7``: the
            paper's layers 5 and 7).
        fill: value of hidden pixels (0.0: the data mean, gray).
        subset_size: images per draw (the paper: 5); at most ``N``, at least 2.
        repeats: number of random draws (subsets and random mask positions).
        random_like: the part whose masks are moved at random for the ``"random"`` row
            (``None``: the first part).
        seed: seed of the draws.
        tol: relative threshold below which a feature change counts as zero (see module doc).
        batch_size: images per forward pass.

    Returns:
        A :class:`Correspondence` (rows: the parts, then ``"random"``).

    Raises:
        ValueError: a bad argument; the message names it.

    Example:
        >>> masks = {"tip": keypoint_masks(ds, idx, "tip", 12)}  # doctest: +SKIP
        >>> print(correspondence(model, x, masks, repeats=20).table())  # doctest: +SKIP
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be a [N, C, H, W] tensor")
    n, _, h, w = images.shape
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty dict: part name -> [N, H, W] bool masks")
    if "random" in masks:
        raise ValueError("masks: 'random' is the name of the random row; name the part otherwise")
    for part, m in masks.items():
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != (n, h, w):
            raise ValueError(
                f"masks[{part!r}] must be [N={n}, H={h}, W={w}], got "
                + (str(tuple(m.shape)) if isinstance(m, torch.Tensor) else type(m).__name__)
            )
    for name, value, low in (("subset_size", subset_size, 2), ("repeats", repeats, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if subset_size > n:
        raise ValueError(f"subset_size={subset_size} is more than the {n} images given")
    if random_like is None:
        random_like = next(iter(masks))
    if random_like not in masks:
        raise ValueError(f"random_like={random_like!r} is not one of the parts {list(masks)}")
    if isinstance(layers, (str, nn.Module)) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    names = [resolve_layer(model, layer)[0] for layer in layers]

    g = torch.Generator().manual_seed(seed)
    subsets = torch.stack([torch.randperm(n, generator=g)[:subset_size].sort().values for _ in range(repeats)])
    delta: dict[str, dict[str, torch.Tensor]] = {}
    for part, m in masks.items():
        eps = feature_changes(model, images, m.bool(), names, fill=fill, tol=tol, batch_size=batch_size)
        hamming = {name: _pairwise_hamming(e) for name, e in eps.items()}
        delta[part] = {name: torch.stack([_subset_delta(hamming[name], s) for s in subsets]) for name in names}
    delta["random"] = {name: torch.zeros(repeats) for name in names}
    reference = masks[random_like].bool()
    for r, s in enumerate(subsets):
        moved = random_masks_like(reference[s], g)
        eps = feature_changes(model, images[s], moved, names, fill=fill, tol=tol, batch_size=batch_size)
        for name in names:
            delta["random"][name][r] = correspondence_delta(eps[name])
    return Correspondence(
        layers=names,
        delta=delta,
        subset_size=subset_size,
        repeats=repeats,
        num_images=n,
        subsets=subsets,
        meta={"random_like": random_like, "fill": float(fill), "tol": tol, "seed": seed},
    )


# ------------------------------------------------------------------------------------ internals
def _subset_delta(hamming: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    sub = hamming[subset][:, subset]
    return sub.sum() - sub.diagonal().sum()


def _match_layer(layers: list[str], layer: str) -> tuple[str, int]:
    for k, name in enumerate(layers):
        if name == layer or name.endswith("." + layer):
            return name, k
    raise KeyError(f"layer {layer!r} is not one of {layers}")


def _device(model: nn.Module, images: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else images.device

