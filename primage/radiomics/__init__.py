"""Radiomic features with pyradiomics: extraction, IBSI compliance, robustness, harmonisation.

* :mod:`~primage.radiomics.params`: presets (``primage``, ``ibsi``, ``full``; pyradiomics
  YAML files in ``primage/presets/radiomics/``), user parameter files, validation against
  pyradiomics' schema, fixed bin width per modality.
* :mod:`~primage.radiomics.extraction`: one pyradiomics ``execute`` per (image, region),
  in parallel worker processes, with per-row errors and diagnostics.
* :mod:`~primage.radiomics.robustness` and :mod:`~primage.radiomics.icc`: ICC(2,1) of
  every feature over cases x observers or perturbations.
* :mod:`~primage.radiomics.harmonize`: ComBat (neuroCombat) across sites or scanners.
* :mod:`~primage.radiomics.ibsi`: the IBSI digital phantom against its reference values
  (``scripts/ibsi_compliance.py`` writes ``docs/ibsi-compliance.md``).
* :mod:`~primage.radiomics.jobs`: runners for separate-process jobs (:mod:`primage.jobs`; the Slicer module's GUI).
* :mod:`~primage.radiomics.tables`: CSV tables that read back bit for bit.
* :mod:`~primage.radiomics.demo`: the radiomics step of ``make demo``.

pyradiomics is imported lazily, inside the functions that need it.
"""
