"""Data: the embedded offline shapes data set and LightningDataModules (shapes, image folders)."""

from zflight.data.datamodules import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataModule,
    ImageFolderDataset,
    ShapesDataModule,
    UnreadableImageError,
)
from zflight.data.shapes import CLASSES as SHAPES_CLASSES
from zflight.data.shapes import ShapesDataset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASSES",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "UnreadableImageError",
]
