"""zflight: train ZFNet with PyTorch Lightning and see what every layer learned.

Public names, by the way data flows: data → models → LightningModule → callbacks → figures,
with the attribution tools (plain PyTorch + Captum, no Lightning) beside them.
"""

from zflight.attribution import DeconvNet
from zflight.attribution import OcclusionMaps, occlusion_maps
from zflight.attribution import ReceptiveField, TopActivations, receptive_field, top_activations
from zflight.attribution import InvarianceCurves, invariance_curves
from zflight.attribution import Correspondence, correspondence
from zflight.attribution import ArchitectureReport, architecture_report
from zflight.callbacks import FeatureEvolution, FilterGrid, TopActivationPanels
from zflight.data import ImageFolderDataModule, ShapesDataModule, ShapesDataset
from zflight.models import ZFNet, alexnet_zf, build_model, renormalize_filters, zfnet

__version__ = "0.1.0"

__all__ = [
    "DeconvNet",
    "ImageFolderDataModule",
    "OcclusionMaps",
    "ShapesDataModule",
    "ShapesDataset",
    "ZFNet",
    "alexnet_zf",
    "build_model",
    "occlusion_maps",
    "renormalize_filters",
    "zfnet",
    "ReceptiveField",
    "TopActivations",
    "receptive_field",
    "top_activations",
    "FeatureEvolution",
    "FilterGrid",
    "TopActivationPanels",
    "ArchitectureReport",
    "Correspondence",
    "InvarianceCurves",
    "architecture_report",
    "correspondence",
    "invariance_curves",
]
