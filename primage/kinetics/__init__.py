"""Kinetic maps: DWI (ADC, IVIM), DCE (semi-quantitative, Tofts) and Fit-Cluster-Fit habitats.

Every fit runs over all voxels at once (batched closed-form solutions and a batched
Levenberg-Marquardt solver), in chunks of voxels so memory stays bounded. Engine only:
numpy, scipy and SimpleITK. Submodules: :mod:`~primage.kinetics.values` (b-values, frame
times), :mod:`~primage.kinetics.dwi`, :mod:`~primage.kinetics.dce`,
:mod:`~primage.kinetics.aif`, :mod:`~primage.kinetics.tofts`, :mod:`~primage.kinetics.fcf`,
:mod:`~primage.kinetics.fitting` (the solvers), :mod:`~primage.kinetics.series` (4D series
as voxel arrays) and :mod:`~primage.kinetics.demo` (the demo report section).
"""

# The names below are imported on first use (PEP 562), so that ``primage kinetics adc``
# does not pay for scipy.stats (imported by dce) at start-up.
_SOURCES = {
    "ArterialInput": "aif",
    "population_aif": "aif",
    "read_aif_csv": "aif",
    "sampled_aif": "aif",
    "dce_maps": "dce",
    "semi_quantitative": "dce",
    "spgr_concentration": "dce",
    "adc_maps": "dwi",
    "fit_adc": "dwi",
    "fit_ivim": "dwi",
    "ivim_maps": "dwi",
    "roi_statistics": "dwi",
    "fcf_adc": "fcf",
    "fcf_iauc60": "fcf",
    "fcf_maps": "fcf",
    "kmeans_1d": "fcf",
    "KineticsCancelled": "series",
    "KineticsWarning": "series",
    "fit_tofts": "tofts",
    "tofts_maps": "tofts",
    "parse_values": "values",
}


def __getattr__(name: str):
    if name in _SOURCES:
        import importlib

        return getattr(importlib.import_module(f"primage.kinetics.{_SOURCES[name]}"), name)
    raise AttributeError(f"module 'primage.kinetics' has no attribute {name!r}")


__all__ = [
    "ArterialInput",
    "KineticsCancelled",
    "KineticsWarning",
    "adc_maps",
    "dce_maps",
    "fcf_adc",
    "fcf_iauc60",
    "fcf_maps",
    "fit_adc",
    "fit_ivim",
    "fit_tofts",
    "ivim_maps",
    "kmeans_1d",
    "parse_values",
    "population_aif",
    "read_aif_csv",
    "roi_statistics",
    "sampled_aif",
    "semi_quantitative",
    "spgr_concentration",
    "tofts_maps",
]
