"""A transfer task on the embedded generator: ten shape classes the quickstart network never saw.

Zeiler & Fergus test what ImageNet features are worth on other data sets (Caltech-101, -256,
PASCAL) with few training images per class. :class:`TransferShapesDataset` is the same question
at quickstart scale: the shapes data set's generator (backgrounds, colours, sizes, rotations,
distractors, noise and shading drawn exactly as in :class:`~zflight.data.ShapesDataset`), with
ten new object classes (:data:`TRANSFER_CLASSES`) in place of the ten it trains on. A linear
probe or a fine-tuned head on 5, 15 or 30 images per class then measures how well features
learned on the first ten shapes serve the next ten, as Caltech measures ImageNet's.

The default seed (1000) is far from those the quickstart's splits use (0, 1, 2), so even the
backgrounds are new.
"""

from __future__ import annotations

import math

import numpy as np

from zflight.data.shapes import ShapesDataset, _normalized, _Op, _regular

__all__ = ["TRANSFER_CLASSES", "TransferShapesDataset"]

#: The transfer task's class names, in label order. None is a class of the shapes data set.
TRANSFER_CLASSES: tuple[str, ...] = (
    "pentagon",
    "hexagon",
    "diamond",
    "semicircle",
    "tee",
    "chevron",
    "trapezoid",
    "hourglass",
    "frame",
    "dumbbell",
)

_Template = tuple[list[_Op], dict[str, tuple[float, float]]]


def _polygon(points: list[tuple[float, float]], keypoints: dict[str, tuple[float, float]]) -> _Template:
    """One filled polygon, centred and scaled into the unit circle with its keypoints."""
    return _normalized([("poly", points, 255)], keypoints, points)


def _build_transfer_templates() -> list[_Template]:
    t: list[_Template] = []
    for sides in (5, 6):  # pentagon, hexagon
        pts = _regular(sides)
        t.append(_polygon(pts, {**{f"vertex{k}": p for k, p in enumerate(pts)}, "center": (0.0, 0.0)}))
    # diamond: a rhombus twice as tall as wide, so it is no rotated square
    pts = [(0.0, -1.0), (0.5, 0.0), (0.0, 1.0), (-0.5, 0.0)]
    t.append(_polygon(pts, {"top": pts[0], "right": pts[1], "bottom": pts[2], "left": pts[3], "center": (0.0, 0.0)}))
    # semicircle: the upper half disk, as a 33-point arc and its diameter
    arc = [(math.cos(a), math.sin(a)) for a in np.linspace(math.pi, 2 * math.pi, 33)]
    t.append(_polygon(arc, {"corner0": arc[0], "corner1": arc[-1], "apex": arc[16], "center": (0.0, -0.4)}))
    # tee: a bar on a stem
    pts = [(-1, -1), (1, -1), (1, -0.55), (0.22, -0.55), (0.22, 1), (-0.22, 1), (-0.22, -0.55), (-1, -0.55)]
    t.append(_polygon(pts, {"end0": (-1.0, -0.78), "end1": (1.0, -0.78), "foot": (0.0, 1.0), "center": (0.0, -0.3)}))
    # chevron: a thick ">" (an arrow's head without its shaft)
    pts = [(-1, -1), (-0.35, -1), (0.65, 0), (-0.35, 1), (-1, 1), (0, 0)]
    t.append(_polygon(pts, {"point": (0.65, 0.0), "end0": (-0.7, -1.0), "end1": (-0.7, 1.0), "center": (0.0, 0.0)}))
    # trapezoid: a short top on a long base
    pts = [(-0.45, -0.6), (0.45, -0.6), (1.0, 0.6), (-1.0, 0.6)]
    t.append(_polygon(pts, {**{f"vertex{k}": p for k, p in enumerate(pts)}, "center": (0.0, 0.0)}))
    # hourglass: two triangles meeting at a narrow waist
    pts = [(-0.8, -1), (0.8, -1), (0.12, 0), (0.8, 1), (-0.8, 1), (-0.12, 0)]
    t.append(_polygon(pts, {"top": (0.0, -1.0), "bottom": (0.0, 1.0), "waist": (0.0, 0.0), "center": (0.0, 0.0)}))
    # frame: a square with a square hole (the ring's square cousin)
    outer = _regular(4, -45.0)
    inner = [(0.5 * x, 0.5 * y) for x, y in outer]
    t.append(
        (
            [("poly", outer, 255), ("poly", inner, 0)],
            {**{f"corner{k}": p for k, p in enumerate(outer)}, "center": (0.0, 0.0)},
        )
    )
    # dumbbell: two overlapping disks, side by side (extent 1 along x, 0.55 along y)
    t.append(
        (
            [("disk", (-0.45, 0.0), 0.55, 255), ("disk", (0.45, 0.0), 0.55, 255)],
            {"lobe0": (-0.45, 0.0), "lobe1": (0.45, 0.0), "center": (0.0, 0.0)},
        )
    )
    return t


_TRANSFER_TEMPLATES = _build_transfer_templates()
assert len(_TRANSFER_TEMPLATES) == len(TRANSFER_CLASSES)


class TransferShapesDataset(ShapesDataset):
    """Ten new shape classes (:data:`TRANSFER_CLASSES`) drawn by the shapes data set's generator.

    Everything but the object's outline is drawn as :class:`~zflight.data.ShapesDataset` draws
    it (same sizes, colours, backgrounds, distractors, noise, normalization, balanced labels,
    boxes, masks, keypoints and concept masks), so a network trained on the shapes data set
    sees familiar pictures of unfamiliar objects.

    Args:
        num_samples: number of items (labels are balanced: any prefix of ``10 * m`` items holds
            ``m`` of each class).
        image_size: height and width in pixels (the quickstart's 64 by default).
        seed: non-negative int; 1000 by default, away from the seeds the quickstart trains on.
        clutter: as in :class:`~zflight.data.ShapesDataset`.
        transform: as in :class:`~zflight.data.ShapesDataset`.

    Example:
        >>> ds = TransferShapesDataset(20)
        >>> ds.classes[:3], ds[0][0].shape
        (['pentagon', 'hexagon', 'diamond'], torch.Size([3, 64, 64]))
    """

    _class_names = TRANSFER_CLASSES
    _templates = _TRANSFER_TEMPLATES

    def __init__(self, num_samples: int, *, image_size: int = 64, seed: int = 1000, clutter: float = 1.0,
                 transform=None) -> None:
        super().__init__(num_samples, image_size=image_size, seed=seed, clutter=clutter, transform=transform)

    def __repr__(self) -> str:
        return (
            f"TransferShapesDataset(num_samples={self.num_samples}, image_size={self.image_size}, "
            f"seed={self.seed}, clutter={self.clutter})"
        )
