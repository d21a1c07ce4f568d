"""The kinds of stamp: what each one adds to a batch, and the registry of them.

Each kind has an optional ``prepare(batch, idx)``, which adjusts the observing conditions
(misregistration, kernel error) before the static scene is drawn, and a ``render(batch,
idx)``, which adds the event to the noiseless scene. Both work on the batch rows ``idx``
(an int array) of their kind and draw from ``batch.rng``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.core.data.synthetic.config import REAL_KIND
from pipeline.core.data.synthetic.kinds import (
    bad_subtraction,
    ccd_defect,
    cosmic_ray,
    negative_point,
    noise_excursion,
    point_transient,
    trail,
    variable_star,
)
from pipeline.core.data.synthetic.observation import Batch

Step = Callable[[Batch, np.ndarray], None]

# kind -> (prepare or None, render). The order of this dict is the order in which the
# kinds draw from the random stream: changing it changes every stamp of a seed.
RENDERERS: dict[str, tuple[Step | None, Step]] = {
    REAL_KIND: (None, point_transient.render),
    "noise_excursion": (None, noise_excursion.render),
    "bad_subtraction": (bad_subtraction.prepare, bad_subtraction.render),
    "variable_star": (None, variable_star.render),
    "negative_point": (None, negative_point.render),
    "point_like": (None, point_transient.render),
    "cosmic_ray": (None, cosmic_ray.render),
    "ccd_defect": (None, ccd_defect.render),
    "trail": (None, trail.render),
}
