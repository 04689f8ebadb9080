"""Which optional Python packages are missing from this Python (Slicer's, inside Slicer).

The module widgets install what is missing on first use, after asking (the asking is GUI
work and stays in the widgets); this module only finds out what is missing. A
requirements file lists pinned requirements, one per line (``#`` comments allowed).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping

#: torch as installed by the modules when the PyTorch extension is absent (the CPU build from
#: PyPI on Linux and Windows needs the PyTorch index; pip picks the default build).
TORCH_REQUIREMENT = "torch==2.14.1"

#: Distribution name -> import name, where they differ.
IMPORT_NAMES = {
    "pyradiomics-bhklab": "radiomics",
    "neuroCombat": "neuroCombat",
}


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement line (``monai==1.6.1`` -> ``monai``)."""
    for separator in ("==", ">=", "<=", "~=", "!=", ">", "<", "[", ";", " "):
        requirement = requirement.split(separator, 1)[0]
    return requirement.strip()


def read_requirements(path: str | os.PathLike) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    with open(path, encoding="utf-8") as stream:
        lines = [line.split("#", 1)[0].strip() for line in stream]
    return [line for line in lines if line]


def missing_requirements(
    requirements: Iterable[str], import_names: Mapping[str, str] | None = None
) -> list[str]:
    """The requirements whose module cannot be imported here (to install)."""
    names = {**IMPORT_NAMES, **(import_names or {})}
    missing = []
    for requirement in requirements:
        name = requirement_name(requirement)
        module = names.get(name, name.replace("-", "_"))
        if importlib.util.find_spec(module) is None:
            missing.append(requirement)
    return missing


def torch_installed() -> bool:
    """Whether ``torch`` can be imported (it is installed separately: the PyTorch extension)."""
    return importlib.util.find_spec("torch") is not None


def requirements_for_model(requirements_path: str | os.PathLike, model_folder=None) -> list[str]:
    """The pinned requirements (besides torch) needed to run ``model_folder``: ``nnunetv2`` for
    an nnU-Net v2 folder, else ``monai`` (primage folders, and training when None)."""
    wanted = "monai"
    if model_folder:
        from primage.segmentation.models import model_kind

        if model_kind(model_folder) == "nnunet":
            wanted = "nnunetv2"
    found = [r for r in read_requirements(requirements_path) if requirement_name(r) == wanted]
    if not found:
        raise FileNotFoundError(f"{requirements_path} does not pin {wanted}")
    return found
