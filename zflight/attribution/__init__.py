"""Ways to make a map from a model and an input: plain PyTorch + Captum, no Lightning, no drawing.

- :class:`DeconvNet`: the paper's deconvnet (Fig. 1), ``attribute`` and ``project``;
- :class:`GuidedBackprop`: guided backpropagation on the same rule mechanism (exact where
  Captum's misses functional ReLUs);
- :func:`occlusion_maps`: occlusion sensitivity (Fig. 7), with exact incremental inference;
- :data:`METHODS` / :func:`attribute`: every map-making method by name (zflight's, Captum's,
  a random baseline), one registry for the explanation scores;
- layer lookup shared by everything in zflight: :func:`resolve_layer`, :func:`forward_to`.

Layers are named as in ``model.named_modules()`` (or by a unique suffix such as ``"conv5"``).
What one measures with these maps (top activations, invariance, ...) is in :mod:`zflight.analysis`.
"""

from zflight.attribution._layers import LayerNotReachedError, forward_to, resolve_layer
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.guided_backprop import GuidedBackprop
from zflight.attribution.methods import METHODS, attribute
from zflight.attribution.occlusion import OcclusionMaps, occlusion_maps

__all__ = [
    "DeconvNet",
    "GuidedBackprop",
    "METHODS",
    "attribute",
    "OcclusionMaps",
    "occlusion_maps",
    "LayerNotReachedError",
    "forward_to",
    "resolve_layer",
]
