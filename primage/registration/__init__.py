"""Intra-patient registration: rigid -> affine -> B-spline with masks, motion correction
of dynamic series, and quality control (numbers, verdict, snapshots).

>>> from primage.registration import load_preset, register_images
>>> result = register_images(t2w, ct, load_preset("mr-ct"))  # doctest: +SKIP
>>> result.transform  # fixed -> moving (LPS): sitk.Resample(ct, t2w, result.transform)
"""

from primage.registration.core import (
    RegistrationFailed,
    RegistrationResult,
    compose,
    looks_like_label_map,
    register_images,
    resample_to_fixed,
    settings_for,
)
from primage.registration.presets import list_presets, load_preset
from primage.registration.stages import stages_from_names, validate_settings

__all__ = [
    "RegistrationFailed",
    "RegistrationResult",
    "compose",
    "list_presets",
    "load_preset",
    "looks_like_label_map",
    "register_images",
    "resample_to_fixed",
    "settings_for",
    "stages_from_names",
    "validate_settings",
]
