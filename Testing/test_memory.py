"""primage.memory: a freed image's memory serves the next image instead of fresh pages, in
the main thread and in threads started afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import SimpleITK as sitk
from primage.memory import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory() and reuse_freed_memory()  # once per process, idempotent
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def twice():
    first = sitk.Image(256, 256, 256, sitk.sitkFloat32)  # 64 MB, zero-filled by ITK
    del first
    before = faults()
    second = sitk.Image(256, 256, 256, sitk.sitkFloat32)
    print(faults() - before)
if sys.argv[2] == "thread":  # a thread started afterwards (e.g. a fitting pool's)
    import threading
    worker = threading.Thread(target=twice)
    worker.start()
    worker.join()
else:
    twice()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_freed_image_is_reused_without_page_faults():
    def faults(mode: str, where: str = "main") -> int:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, mode, where], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    pages = 64 * 2**20 // 4096
    for where in ("main", "thread"):
        assert faults("default", where) > pages // 2  # the block went back: fresh pages
        assert faults("reuse", where) < pages // 100
