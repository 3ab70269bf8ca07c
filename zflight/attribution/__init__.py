"""Attribution tools over any ``nn.Module`` CNN: plain PyTorch + Captum, no Lightning."""

from zflight.attribution._layers import LayerNotReachedError, forward_to, resolve_layer
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.occlusion import OcclusionMaps, occlusion_maps
from zflight.attribution.receptive_field import ReceptiveField, receptive_field
from zflight.attribution.topk import TopActivations, top_activation_crops, top_activations
from zflight.attribution.invariance import InvarianceCurves, invariance_curves
from zflight.attribution.correspondence import Correspondence, correspondence, correspondence_delta, keypoint_masks
from zflight.attribution.architecture import (ArchitectureReport, architecture_report, dead_filters,
                                              shift_aliasing, spectral_bands, stride_aliasing)

__all__ = ["DeconvNet", "LayerNotReachedError", "forward_to", "resolve_layer",
           "ReceptiveField", "receptive_field", "TopActivations", "top_activation_crops", "top_activations",
           "OcclusionMaps", "occlusion_maps",
           "InvarianceCurves", "invariance_curves",
           "Correspondence", "correspondence", "correspondence_delta", "keypoint_masks",
           "ArchitectureReport", "architecture_report", "dead_filters", "shift_aliasing",
           "spectral_bands", "stride_aliasing"]
