"""DICOM in: find, classify and assemble a patient's series into pseudonymised cases.

* :func:`scan_folder` / :func:`scan_files` — series by study, features, proposed roles
  (rule table ``primage/presets/dicom/roles.json``), checks; never raises on bad files.
* :func:`write_inventory` / :func:`read_roles` — the editable inventory CSV.
* :func:`apply_roles`, :func:`assemble` — case folders in the cohort layout (NIfTI,
  ``dwi.bval``, ``dce.times``, ``case.json`` with frame-of-reference tokens), PET in SUVbw,
  tumour masks from RT Structure Sets and SEG (:mod:`primage.dicom.masks`).
* :func:`pseudonymiser` — case names from a map or a keyed hash with the user's secret.

Imports numpy, SimpleITK, pydicom and the standard library (highdicom when a SEG is read).
"""

from primage.dicom.assemble import AssemblyResult, apply_roles, assemble, plan_images
from primage.dicom.inventory import read_roles, write_inventory
from primage.dicom.pseudonym import Pseudonymiser, pseudonymiser
from primage.dicom.scan import ScanResult, plan_study, scan_files, scan_folder

__all__ = [
    "AssemblyResult",
    "Pseudonymiser",
    "ScanResult",
    "apply_roles",
    "assemble",
    "plan_images",
    "plan_study",
    "pseudonymiser",
    "read_roles",
    "scan_files",
    "scan_folder",
    "write_inventory",
]
