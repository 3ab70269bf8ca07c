"""Attribution tools over any ``nn.Module`` CNN: plain PyTorch + Captum, no Lightning.

Layers are named as in ``model.named_modules()`` (or by a unique suffix such as ``"conv5"``).
"""

from zflight.attribution._layers import LayerNotReachedError, forward_to, resolve_layer
from zflight.attribution.architecture import (
    ArchitectureReport,
    architecture_report,
    dead_filters,
    shift_aliasing,
    spectral_bands,
    stride_aliasing,
)
from zflight.attribution.correspondence import (
    Correspondence,
    correspondence,
    correspondence_delta,
    keypoint_masks,
)
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.invariance import InvarianceCurves, invariance_curves
from zflight.attribution.occlusion import OcclusionMaps, occlusion_maps
from zflight.attribution.receptive_field import ReceptiveField, receptive_field
from zflight.attribution.topk import TopActivations, top_activation_crops, top_activations

__all__ = [
    # deconvnet (Fig. 1) and what it is used for
    "DeconvNet",
    "TopActivations",
    "top_activations",
    "top_activation_crops",
    "ReceptiveField",
    "receptive_field",
    # the paper's analyses
    "OcclusionMaps",
    "occlusion_maps",
    "InvarianceCurves",
    "invariance_curves",
    "ArchitectureReport",
    "architecture_report",
    "dead_filters",
    "spectral_bands",
    "stride_aliasing",
    "shift_aliasing",
    "Correspondence",
    "correspondence",
    "correspondence_delta",
    "keypoint_masks",
    # layer lookup shared by all of them
    "LayerNotReachedError",
    "forward_to",
    "resolve_layer",
]
