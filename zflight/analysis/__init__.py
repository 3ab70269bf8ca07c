"""What the paper measures with maps and activations: functions that return small result classes.

Plain PyTorch (and :mod:`zflight.attribution`), no Lightning, no argparse, no drawing:

- Fig. 2: :func:`top_activations` (the strongest activations of feature maps over a data set,
  projected to pixels) and :func:`receptive_field` (which input pixels a unit sees);
- Fig. 5: :func:`invariance_curves`; Fig. 6: :func:`architecture_report`; Table 1:
  :func:`correspondence`; Fig. 7: :func:`occlusion_analysis` (occlusion maps plus the tracked
  feature map's projection);
- explanation scores: :func:`pointing_game`, :func:`relevance_mass`, :func:`relevance_rank`,
  :func:`deletion_auc`, :func:`insertion_auc` (is a map on the object? does removing what it
  points at change the output?) and the sanity checks :func:`model_randomization`,
  :func:`class_sensitivity` (Adebayo et al., 2018); :func:`score_methods` scores every
  method of the registry with all of them at once;
- network dissection: :func:`dissect` labels each unit with the concept its strongest
  activations overlap most (Bau et al., 2017);
- Tables 4-7: :func:`linear_probe`, a linear classifier on each layer's features, trained on a
  few images per class (Alain & Bengio's linear probes).

Their pictures are drawn by :mod:`zflight.figures`.
"""

from zflight.analysis.architecture import (
    ArchitectureReport,
    architecture_report,
    dead_filters,
    shift_aliasing,
    spectral_bands,
    stride_aliasing,
)
from zflight.analysis.correspondence import (
    Correspondence,
    correspondence,
    correspondence_delta,
    keypoint_masks,
)
from zflight.analysis.dissection import (
    CONCEPT_FAMILIES,
    ConceptSubset,
    Dissection,
    LayerDissection,
    UnitExamples,
    dissect,
    unit_examples,
)
from zflight.analysis.evaluation import (
    PerturbationCurves,
    deletion_auc,
    insertion_auc,
    perturbation_curves,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from zflight.analysis.explanations import METRICS, ScoreTable, score_methods
from zflight.analysis.histograms import ActivationHistograms, HistogramRecorder
from zflight.analysis.invariance import InvarianceCurves, invariance_curves
from zflight.analysis.occlusion import occlusion_analysis
from zflight.analysis.receptive_field import ReceptiveField, receptive_field
from zflight.analysis.sanity import (
    ClassSensitivity,
    RandomizationResult,
    class_sensitivity,
    model_randomization,
)
from zflight.analysis.probe import LayerProbe, ProbeResult, linear_probe, probe_features
from zflight.analysis.topk import TopActivations, top_activation_crops, top_activations

__all__ = [
    "TopActivations",
    "top_activations",
    "top_activation_crops",
    "ActivationHistograms",
    "HistogramRecorder",
    "ReceptiveField",
    "receptive_field",
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
    "occlusion_analysis",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "deletion_auc",
    "insertion_auc",
    "perturbation_curves",
    "PerturbationCurves",
    "model_randomization",
    "RandomizationResult",
    "class_sensitivity",
    "ClassSensitivity",
    "score_methods",
    "ScoreTable",
    "METRICS",
    "dissect",
    "Dissection",
    "LayerDissection",
    "ConceptSubset",
    "unit_examples",
    "UnitExamples",
    "CONCEPT_FAMILIES",
    "linear_probe",
    "probe_features",
    "ProbeResult",
    "LayerProbe",
]
