"""Attribution tools over any ``nn.Module`` CNN: plain PyTorch + Captum, no Lightning."""

from zflight.attribution._layers import LayerNotReachedError, forward_to, resolve_layer
from zflight.attribution.deconvnet import DeconvNet

__all__ = ["DeconvNet", "LayerNotReachedError", "forward_to", "resolve_layer"]
