"""Attribution tools over any ``nn.Module`` CNN: plain PyTorch + Captum, no Lightning."""

from zflight.attribution._layers import LayerNotReachedError, forward_to, resolve_layer

__all__ = ["LayerNotReachedError", "forward_to", "resolve_layer"]
