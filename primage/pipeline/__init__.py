"""The cohort pipeline: preprocess -> register -> segment -> kinetics -> radiomics for every
case of a cohort, resumable by content hashes, on one machine or a Dask cluster.

* :mod:`~primage.pipeline.config`: the YAML configuration (defaults, validation).
* :mod:`~primage.pipeline.cohort`: case folders and cohorts (folder or CSV).
* :mod:`~primage.pipeline.units`: work units, content hashes, step manifests.
* :mod:`~primage.pipeline.steps`: the steps, calling the engine of each capability.
* :mod:`~primage.pipeline.segmenters`: segmentation methods (pluggable; ``given`` today).
* :mod:`~primage.pipeline.case`: one case's chain, status, provenance and summary.
* :mod:`~primage.pipeline.runner`: the cohort on Dask (or in this process), status.csv.
* :mod:`~primage.pipeline.report`: features.csv and the self-contained report.html.
* :mod:`~primage.pipeline.figures`: the report's PNGs (numpy + zlib).
* :mod:`~primage.pipeline.demo`: the pipeline section of ``make demo``.

Dask is imported only when a cohort runs on it, so ``import primage`` stays light.
"""

from primage.pipeline.cohort import Case, discover_cohort, read_case
from primage.pipeline.config import DEFAULT_CONFIG_TEXT, load_config, validate_config
from primage.pipeline.runner import CohortResult, run_cohort

__all__ = [
    "DEFAULT_CONFIG_TEXT",
    "Case",
    "CohortResult",
    "discover_cohort",
    "load_config",
    "read_case",
    "run_cohort",
    "validate_config",
]
