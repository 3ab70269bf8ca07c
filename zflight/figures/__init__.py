"""All of zflight's drawing: result objects and tensors to pictures; nothing here runs a model.

- :mod:`zflight.figures.grids`: the projection display rule (:func:`normalize_projection`), the
  paper's Fig. 2 panels, Fig. 4 evolution grids, filter grids, and the PNG / figure writers;
- :mod:`zflight.figures.occlusion`: the paper's Fig. 7 from an
  :class:`~zflight.OcclusionMaps`;
- :mod:`zflight.figures.evaluation`: explanation maps beside the object masks, deletion
  curves, sanity-check curves;
- :mod:`zflight.figures.dissection`: units' top images masked where they fire, captioned with
  their concept and IoU (Bau et al.'s Fig. 2);
- :mod:`zflight.figures.report`: the unit explorer, a static HTML site
  (``python -m zflight report``).

Tensor pictures are float ``[3, H, W]`` in [0, 1], what ``SummaryWriter.add_image`` takes.
"""

from zflight.figures.grids import (
    evolution_grid,
    figure_to_tensor,
    filter_grid,
    normalize_projection,
    save_figure,
    save_png,
    to_uint8,
    top_activation_panel,
    write_json,
)
from zflight.figures.dissection import dissection_panel, unit_caption, unit_label
from zflight.figures.evaluation import evaluation_figure, sanity_figure
from zflight.figures.invariance import example_strip, invariance_figure
from zflight.figures.occlusion import occlusion_figure
from zflight.figures.probe import probe_figure, probe_table
from zflight.figures.report import ReportContent, render_html, write_site

__all__ = [
    "normalize_projection",
    "top_activation_panel",
    "evolution_grid",
    "filter_grid",
    "occlusion_figure",
    "probe_figure",
    "probe_table",
    "invariance_figure",
    "example_strip",
    "dissection_panel",
    "unit_caption",
    "unit_label",
    "evaluation_figure",
    "sanity_figure",
    "ReportContent",
    "render_html",
    "write_site",
    "to_uint8",
    "save_png",
    "save_figure",
    "figure_to_tensor",
    "write_json",
]
