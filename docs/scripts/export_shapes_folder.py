"""Write images of the embedded shapes data set as a folder of PNGs, with their object masks.

Usage (from the repository root)::

    python docs/scripts/export_shapes_folder.py OUT [--num_images 40] [--split val] [--image_size 64]

writes ``OUT/images/<class>/<index>.png`` (the first ``--num_images`` images of the split, as a
data module with the default seed draws them) and ``OUT/masks/<class>/<index>.png`` (each
image's exact object mask: 255 on the object, 0 elsewhere): the layout
``python -m zflight evaluate --images OUT/images --masks OUT/masks`` reads. docs/evaluation.md
uses it to check that scoring a folder against its mask files gives the numbers of scoring the
embedded data set against its exact masks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from zflight.data import ShapesDataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to create (images/ and masks/ inside)")
    p.add_argument("--num_images", type=int, default=40)
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--size", type=int, default=1000, help="size of the split (ShapesDataModule's val_size)")
    args = p.parse_args()
    seed = {"train": 0, "val": 1, "test": 2}[args.split]  # ShapesDataModule: split k draws seed 3*seed + k
    dataset = ShapesDataset(args.size, image_size=args.image_size, seed=seed)
    out = Path(args.out)
    for i in range(args.num_images):
        image, label = dataset[i]
        name = Path(dataset.classes[label]) / f"{i:04d}.png"
        pixels = (dataset.denormalize(image).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for sub, array in (("images", pixels), ("masks", dataset.mask(i).numpy().astype(np.uint8) * 255)):
            path = out / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    print(f"wrote {args.num_images} images and their masks to {out}/images and {out}/masks")


if __name__ == "__main__":
    main()
