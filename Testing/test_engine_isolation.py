"""The engine (everything outside primage.mrml) must load without Slicer, VTK or Qt."""

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN_PREFIXES = ("slicer", "vtk", "qt", "PythonQt")

# In a fresh interpreter: import every module under primage except primage.mrml (not even
# entered, so its package __init__ does not run either) plus any modules named on the
# command line, then list the loaded modules whose names start with a forbidden prefix.
SCRIPT = r"""
import importlib, json, pkgutil, sys

import primage

def walk(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name == "primage.mrml":
            continue
        module = importlib.import_module(info.name)
        yield info.name
        if info.ispkg:
            yield from walk(module)

imported = list(walk(primage))
for extra in sys.argv[2:]:
    importlib.import_module(extra)
loaded = sorted(name for name in sys.modules if name.startswith(tuple(json.loads(sys.argv[1]))))
print(json.dumps({"imported": imported, "loaded": loaded}))
"""


def _run(*extra_modules: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(FORBIDDEN_PREFIXES), *extra_modules],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_engine_imports_no_slicer_vtk_or_qt():
    result = _run()
    # The walk really imported the engine (guards against an empty, trivially passing walk).
    assert {"primage.io", "primage.preprocessing", "primage.cli"} <= set(result["imported"])
    assert not any(name.startswith("primage.mrml") for name in result["imported"])
    assert result["loaded"] == [], f"engine modules loaded {result['loaded']}"


def test_the_check_detects_a_forbidden_import():
    result = _run("primage.mrml.volumes")  # the bridge does import slicer and vtk
    assert any(name.startswith("slicer") for name in result["loaded"])
    assert any(name.startswith("vtk") for name in result["loaded"])
