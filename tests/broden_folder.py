"""A Broden-format folder written by the tests (and ``benchmarks/broden.py``), with its truth.

:func:`write_broden` writes what NetDissect's ``index.csv`` / ``label.csv`` / ``category.csv``
/ ``c_<category>.csv`` / ``images/`` describe: random shapes as objects (one PNG), parts in two
PNG layers, colour masks (one PNG), a material whose label number needs the green channel
(300), whole-image scene and texture labels (digit tokens), and images that annotate only some
categories (a texture-only image, as DTD's are). The images carry their concepts (an object
brightens one channel, a scene tints the image), so some units do detect some concepts. It
returns the truth: per image, per category, the label layers (``[sh, sw]`` int arrays) or
whole-image numbers, for brute-force checks that do not go through the reader.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

#: label number -> (name, categories). 6 ("car") is an object and a part; 300 needs G = 1.
LABELS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("red-c", ("color",)),
    2: ("green-c", ("color",)),
    3: ("blue-c", ("color",)),
    4: ("black-c", ("color",)),
    5: ("dog", ("object",)),
    6: ("car", ("object", "part")),
    7: ("tree", ("object",)),
    8: ("sky", ("object",)),
    9: ("wheel", ("part",)),
    10: ("head", ("part",)),
    11: ("leg", ("part",)),
    12: ("kitchen-s", ("scene",)),
    13: ("street-s", ("scene",)),
    14: ("striped-t", ("texture",)),
    15: ("dotted-t", ("texture",)),
    300: ("wood-m", ("material",)),
    301: ("metal-m", ("material",)),
}
CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
# index.csv's category columns in another order than category.csv: the reader goes by name.
_INDEX_COLUMNS = ["image", "split", "ih", "iw", "sh", "sw", "scene", "object", "color", "part", "texture", "material"]
_OBJECTS, _PARTS, _SCENES, _TEXTURES = [5, 6, 7, 8], [6, 9, 10, 11], [12, 13], [14, 15]
_COLORS = {1: (200, 40, 40), 2: (40, 200, 40), 3: (40, 40, 200), 4: (10, 10, 10)}

Truth = dict[str, list[np.ndarray | int]]


def write_broden(root: Path, n: int, size: int = 32, *, seed: int = 0) -> list[Truth]:
    """Write a Broden-format folder of ``n`` images of ``size`` px (masks ``size // 2``).

    Returns:
        Per image (in ``index.csv`` order), ``{category: [layer [sh, sw] int32 | number]}`` for
        the categories it annotates.
    """
    rng = np.random.default_rng(seed)
    seg = size // 2
    (root / "images" / "gen").mkdir(parents=True, exist_ok=True)
    truths: list[Truth] = []
    rows = []
    for i in range(n):
        img = rng.normal(110, 25, (size, size, 3))
        truth: Truth = {}
        kind = i % 5  # 0-2: full scenes; 3: objects only; 4: a texture-only image
        if kind == 4:
            truth["texture"] = [int(rng.choice(_TEXTURES))]
            if truth["texture"][0] == 14:
                img[::4] += 60
            else:
                img[::3, ::3] += 60
        else:
            obj = np.zeros((seg, seg), np.int32)
            part1 = np.zeros((seg, seg), np.int32)
            part2 = np.zeros((seg, seg), np.int32)
            for _ in range(int(rng.integers(1, 4))):
                label = int(rng.choice(_OBJECTS))
                y, x = (int(v) for v in rng.integers(0, seg - 3, 2))
                h, w = (int(v) for v in rng.integers(3, seg // 2 + 2, 2))
                obj[y : y + h, x : x + w] = label
                img[2 * y : 2 * (y + h), 2 * x : 2 * (x + w), label % 3] += 70
                # parts: the lower half in layer 1, a corner in layer 2 (overlapping layer 1)
                part1[y + h // 2 : y + h, x : x + w] = int(rng.choice(_PARTS))
                part2[y + h - 2 : y + h, x : x + 2] = int(rng.choice(_PARTS))
            truth["object"] = [obj]
            if kind != 3:
                truth["part"] = [part1, part2]
                color = np.zeros((seg, seg), np.int32)
                for label, rgb in _COLORS.items():
                    y, x = (int(v) for v in rng.integers(0, seg - 2, 2))
                    color[y : y + 3, x : x + 4] = label
                    img[2 * y : 2 * y + 6, 2 * x : 2 * x + 8] = rgb
                truth["color"] = [color]
                material = np.where(obj > 6, 300, np.where(obj > 0, 301, 0)).astype(np.int32)
                truth["material"] = [material]
                scene = int(rng.choice(_SCENES))
                truth["scene"] = [scene]
                img[..., scene % 3] += 15
                if kind == 0:
                    truth["texture"] = [int(rng.choice(_TEXTURES))]
        name = f"gen/img_{i:05d}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{name}.jpg", quality=95)
        cells = {}
        for g in CATEGORIES:
            tokens = []
            for j, layer in enumerate(truth.get(g, [])):
                if isinstance(layer, int):
                    tokens.append(str(layer))
                    continue
                png = f"{name}_{g}_{j + 1}.png" if g == "part" else f"{name}_{g}.png"
                rgb = np.zeros((seg, seg, 3), np.uint8)
                rgb[..., 0], rgb[..., 1] = layer % 256, layer // 256
                Image.fromarray(rgb).save(root / "images" / png)
                tokens.append(png)
            cells[g] = ";".join(tokens)
        rows.append({"image": f"{name}.jpg", "split": "train" if i % 4 else "val", "ih": size, "iw": size,
                     "sh": seg, "sw": seg, **cells})
        truths.append(truth)
    _write(root / "index.csv", _INDEX_COLUMNS, rows)
    _write(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
           [{"number": 0, "name": "-", "category": "-(0)", "frequency": 0, "coverage": 0.0, "syns": ""}]
           + [{"number": k, "name": name, "category": ";".join(f"{c}(1)" for c in cats), "frequency": 1,
               "coverage": 1.0, "syns": ""} for k, (name, cats) in LABELS.items()])
    _write(root / "category.csv", ["name", "first", "last", "count", "frequency"],
           [{"name": g, "first": 1, "last": 1, "count": 1, "frequency": 1} for g in CATEGORIES])
    for g in CATEGORIES:
        members = [k for k, (_name, cats) in LABELS.items() if g in cats]
        _write(root / f"c_{g}.csv", ["code", "number", "name", "frequency", "coverage"],
               [{"code": j + 1, "number": k, "name": LABELS[k][0], "frequency": 1, "coverage": 1.0}
                for j, k in enumerate(members)])
    return truths


def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
