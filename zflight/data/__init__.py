"""Data: the embedded offline shapes data set (with exact object and concept masks), users' pixel
labels (:class:`ConceptFolder`), Broden (:class:`BrodenDataset`) and LightningDataModules (shapes, image folders, packed ImageNet)."""

from zflight.data._base import ResumableLoader, ResumableSampler, SeededSamples
from zflight.data.broden import BrodenDataset
from zflight.data.concepts import ConceptFolder
from zflight.data.datamodules import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataModule,
    ImageFolderDataset,
    ShapesDataModule,
    UnreadableImageError,
)
# pack() and verify() stay in zflight.data.pack: exported here they would hide that module.
from zflight.data.pack import PackVerificationError
from zflight.data.packed import PackedBatch, PackedImageNetDataModule, PackedImages, crop_flip_normalize
from zflight.data.shapes import CLASSES as SHAPES_CLASSES
from zflight.data.shapes import ShapesDataset
from zflight.data.transfer import TRANSFER_CLASSES, TransferShapesDataset

__all__ = [
    "BrodenDataset",
    "ConceptFolder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASSES",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "PackVerificationError",
    "PackedBatch",
    "PackedImageNetDataModule",
    "PackedImages",
    "ResumableLoader",
    "ResumableSampler",
    "SeededSamples",
    "ShapesDataModule",
    "ShapesDataset",
    "TRANSFER_CLASSES",
    "TransferShapesDataset",
    "UnreadableImageError",
    "crop_flip_normalize",
]
