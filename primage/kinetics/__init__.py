"""Kinetic maps: DWI (ADC, IVIM), DCE (semi-quantitative, Tofts) and Fit-Cluster-Fit habitats.

Every fit runs over all voxels at once (batched closed-form solutions and a batched
Levenberg-Marquardt solver), in chunks of voxels so memory stays bounded. Engine only:
numpy, scipy and SimpleITK. Submodules: :mod:`~primage.kinetics.values` (b-values, frame
times), :mod:`~primage.kinetics.dwi`, :mod:`~primage.kinetics.dce`,
:mod:`~primage.kinetics.aif`, :mod:`~primage.kinetics.tofts`, :mod:`~primage.kinetics.fcf`,
:mod:`~primage.kinetics.fitting` (the solvers), :mod:`~primage.kinetics.series` (4D series
as voxel arrays) and :mod:`~primage.kinetics.demo` (the demo report section).
"""

from primage.kinetics.aif import ArterialInput, population_aif, read_aif_csv, sampled_aif
from primage.kinetics.dce import dce_maps, semi_quantitative, spgr_concentration
from primage.kinetics.dwi import adc_maps, fit_adc, fit_ivim, ivim_maps, roi_statistics
from primage.kinetics.fcf import fcf_adc, fcf_iauc60, fcf_maps, kmeans_1d
from primage.kinetics.series import KineticsCancelled, KineticsWarning
from primage.kinetics.tofts import fit_tofts, tofts_maps
from primage.kinetics.values import parse_values

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
