"""Lightning callbacks that show what the network learns while it trains.

- :class:`FeatureEvolution`: the paper's Fig. 4 (feature maps' strongest projections, epoch
  after epoch), TensorBoard ``evolution/<layer>``;
- :class:`TopActivationPanels`: the paper's Fig. 2 (top-9 projections beside their image
  patches), TensorBoard ``top9/<layer>``;
- :class:`FilterGrid`: the first layer's filters, TensorBoard ``filters/<layer>``;
- :class:`OcclusionFigures`: the paper's Fig. 7 for fixed validation images, ``occlusion/<index>``;
- :class:`InvarianceFigures`: the paper's Fig. 5 curves, ``invariance``;
- :class:`UnitLabels`: Network Dissection at chosen epochs: detectors and unique concepts per
  layer (scalars ``dissect/<layer>/detectors``, ``dissect/<layer>/unique``), the labelled
  panel ``dissect/<layer>``, and the labels the panels and evolution figures then show;
- :class:`RandomState`: no figure: the global random state in every checkpoint, so that a run
  resumed with ``--ckpt_path last`` ends as the uninterrupted run would (``python -m zflight fit``
  always adds it; see ``docs/resume.md``).

PNG copies go to ``<log_dir>/figures/``. A layer the network lacks (or another setting that does
not fit the run) fails at ``setup``, before the first step, with one
:class:`CallbackConfigError` line naming the callback. In a config::

    trainer:
      callbacks:
        - class_path: zflight.callbacks.FeatureEvolution
          init_args: {layers: [conv1, conv2, conv5], maps: 8}
"""

from zflight.callbacks._common import CallbackConfigError
from zflight.callbacks.dissection import UnitLabels
from zflight.callbacks.evolution import PAPER_EPOCHS, FeatureEvolution
from zflight.callbacks.explanations import ExplanationScores
from zflight.callbacks.invariance import InvarianceFigures
from zflight.callbacks.occlusion import OcclusionFigures
from zflight.callbacks.panels import PAPER_LAYERS, FilterGrid, TopActivationPanels
from zflight.callbacks.random_state import RandomState

__all__ = [
    "FeatureEvolution",
    "TopActivationPanels",
    "FilterGrid",
    "OcclusionFigures",
    "InvarianceFigures",
    "ExplanationScores",
    "UnitLabels",
    "RandomState",
    "CallbackConfigError",
    "PAPER_EPOCHS",
    "PAPER_LAYERS",
]
