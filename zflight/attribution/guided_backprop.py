"""Guided backpropagation (Springenberg et al., 2015) that catches every ReLU, however it is called.

Guided backprop is a backward pass in which every ReLU passes the incoming signal only where
*both* the forward output was positive (the ReLU's own gradient) *and* the signal is positive
(the deconvnet's rectification). It is the deconvnet's rule combined with the gradient's.

Captum's ``GuidedBackprop`` installs its rule with backward hooks on ``nn.ReLU`` modules, so it
misses functional ReLUs (``F.relu``, ``torch.relu``, ``Tensor.relu``), and a ReLU module that is
called twice gets its rule applied to the wrong tensors. zflight's :class:`GuidedBackprop` reuses
the deconvnet's mechanism (:mod:`zflight.attribution._deconv_rules`): a torch function mode that,
while the forward pass runs, routes every ReLU call through an autograd function whose forward is
the very same call and whose backward is the guided rule. One autograd node per call, wherever the
call is written, so the result is exact on any CNN built from ReLUs (every torchvision CNN except
those using ReLU6/Hardswish/SiLU, whose activations are differentiated as usual, as in Captum).

Because it is the deconvnet with another ReLU rule, :class:`GuidedBackprop` is a subclass of
:class:`~zflight.attribution.deconvnet.DeconvNet`: ``attribute`` (from an output or from a layer's
neuron) and ``project`` (a feature map's projection, as in Springenberg et al.'s Fig. 1) work the
same way with the guided rule.
"""

from __future__ import annotations

import contextlib
from typing import get_args

from torch import nn

from zflight.attribution._deconv_rules import Normalization, deconv_rules
from zflight.attribution.deconvnet import DeconvNet

__all__ = ["GuidedBackprop"]


class GuidedBackprop(DeconvNet):
    """Guided backprop as a Captum attribution, exact for functional and reused ReLUs.

    Every ReLU call in the forward pass (``nn.ReLU``, ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and in-place forms, once per call) passes, going down, ``grad`` where
    ``grad > 0`` and its forward output ``> 0``, and zero elsewhere. Everything else (max-pool,
    convolutions, linear layers, normalization, other activations) is differentiated as usual.
    On a model whose only ReLUs are ``nn.ReLU(inplace=False)`` modules called once, this equals
    ``captum.attr.GuidedBackprop``.

    The model runs in whatever mode it is in; call ``model.eval()`` first. Nothing is left
    installed on the model after a call.

    Args:
        model: any ``nn.Module`` that maps a batch to outputs.
        normalization: ``"gradient"`` (default, as Captum: differentiate local response
            normalization) or ``"identity"`` (pass the signal through it unchanged).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``normalization`` is unknown.

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(weights=None).eval()
        >>> GuidedBackprop(model).attribute(torch.randn(2, 3, 64, 64), target=[3, 5]).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, model: nn.Module, *, normalization: Normalization = "gradient") -> None:
        if normalization not in get_args(Normalization):
            raise ValueError(
                f"normalization must be 'gradient' or 'identity', got {normalization!r}"
            )
        # Guided backprop's mask is a ReLU's own derivative: only ReLUs get the rule.
        super().__init__(model, activation_rule="relu", normalization=normalization)

    def _rules(self) -> contextlib.AbstractContextManager[None]:
        return deconv_rules(
            self.model, self.activation_rule, self.normalization, relu_backward="guided"
        )
