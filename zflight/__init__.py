"""zflight: train ZFNet with PyTorch Lightning and see what every layer learned.

Public names, in the order data flows: data → models → LightningModule → callbacks, with the
attribution methods and the analyses built on them (plain PyTorch + Captum, no Lightning)
beside them. The code's rooms: docs/architecture-of-the-code.md.

Example:
    >>> import torch, zflight
    >>> model = zflight.zfnet(num_classes=10, width=0.25, image_size=64).eval()
    >>> zflight.DeconvNet(model).project(torch.randn(2, 3, 64, 64), layer="conv5", channels=0).shape
    torch.Size([2, 3, 64, 64])
"""

from zflight.analysis import (
    ArchitectureReport,
    Dissection,
    class_sensitivity,
    deletion_auc,
    dissect,
    insertion_auc,
    model_randomization,
    pointing_game,
    relevance_mass,
    relevance_rank,
    score_methods,
    Correspondence,
    InvarianceCurves,
    ReceptiveField,
    TopActivations,
    architecture_report,
    correspondence,
    invariance_curves,
    receptive_field,
    top_activation_crops,
    top_activations,
    unit_examples,
    UnitExamples,
    linear_probe,
    ProbeResult,
)
from zflight.attribution import DeconvNet, GuidedBackprop, OcclusionMaps, occlusion_maps
from zflight.checkpoint import load_classifier
from zflight.callbacks import (
    ExplanationScores,
    FeatureEvolution,
    FilterGrid,
    InvarianceFigures,
    OcclusionFigures,
    RandomState,
    TopActivationPanels,
    UnitLabels,
)
from zflight.data import (
    BrodenDataset,
    ConceptFolder,
    ImageFolderDataModule,
    PackedImageNetDataModule,
    ShapesDataModule,
    ShapesDataset,
    TransferShapesDataset,
)
from zflight.models import ZFNet, alexnet_zf, build_model, fit_head, renormalize_filters, zfnet
from zflight.sources import ImageFiles, ModelSource, Preprocess, image_folder, load_model
from zflight.module import ImageClassifier
from zflight.report import build_report

__version__ = "0.1.0"

__all__ = [
    # data
    "ShapesDataset",
    "ConceptFolder",
    "BrodenDataset",
    "ShapesDataModule",
    "ImageFolderDataModule",
    "PackedImageNetDataModule",
    # models
    "ZFNet",
    "zfnet",
    "alexnet_zf",
    "build_model",
    "fit_head",
    "renormalize_filters",
    # any model, any images
    "load_model",
    "ModelSource",
    "Preprocess",
    "image_folder",
    "ImageFiles",
    # training
    "ImageClassifier",
    "load_classifier",
    # callbacks
    "FeatureEvolution",
    "TopActivationPanels",
    "FilterGrid",
    "OcclusionFigures",
    "InvarianceFigures",
    "ExplanationScores",
    "UnitLabels",
    "RandomState",
    # attribution
    "DeconvNet",
    "GuidedBackprop",
    "occlusion_maps",
    "OcclusionMaps",
    # analysis
    "top_activations",
    "top_activation_crops",
    "TopActivations",
    "receptive_field",
    "ReceptiveField",
    "invariance_curves",
    "InvarianceCurves",
    "architecture_report",
    "ArchitectureReport",
    "correspondence",
    "Correspondence",
    # explanation scores
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "deletion_auc",
    "insertion_auc",
    "model_randomization",
    "class_sensitivity",
    "score_methods",
    # network dissection
    "dissect",
    "Dissection",
    "unit_examples",
    "UnitExamples",
    # the unit explorer
    "build_report",
    # linear probes and transfer
    "linear_probe",
    "ProbeResult",
    "TransferShapesDataset",
]
