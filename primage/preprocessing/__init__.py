"""Preprocessing engine: denoising, N4 bias-field correction, intensity normalisation and
resampling, as named steps run by :func:`run_steps`, with modality presets.

>>> from primage.preprocessing import load_preset, run_steps
>>> result = run_steps(image, load_preset("t2w")["steps"])  # doctest: +SKIP
"""

from primage.preprocessing.presets import list_presets, load_preset
from primage.preprocessing.steps import (
    STEPS,
    PreprocessingResult,
    SeriesResult,
    describe_steps,
    iter_steps_volumes,
    run_steps,
    run_steps_series,
    run_steps_volumes,
    series_records,
    validate_steps,
)

__all__ = [
    "STEPS",
    "PreprocessingResult",
    "SeriesResult",
    "describe_steps",
    "iter_steps_volumes",
    "list_presets",
    "load_preset",
    "run_steps",
    "run_steps_series",
    "run_steps_volumes",
    "series_records",
    "validate_steps",
]
