"""Write docs/ibsi-compliance.md: the IBSI digital phantom measured with the `ibsi` preset.

Usage (from the repository root)::

    .venv/bin/python scripts/ibsi_compliance.py [--data FOLDER] [--output FILE]

``--data`` is the folder with ``digital_phantom_image.nii.gz``,
``digital_phantom_mask.nii.gz`` and ``digital_phantom_reference_values.csv`` (default:
``../shared/data/ibsi`` next to the repository). Prints the summary line; exit 2 on bad
input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ibsi"


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from primage.errors import PrimageInputError
    from primage.io import write_text
    from primage.radiomics import ibsi

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="IBSI phantom folder")
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "ibsi-compliance.md", help="report file"
    )
    args = parser.parse_args(argv)
    try:
        reference = ibsi.read_reference(args.data / "digital_phantom_reference_values.csv")
        values = ibsi.phantom_features(
            args.data / "digital_phantom_image.nii.gz", args.data / "digital_phantom_mask.nii.gz"
        )
    except PrimageInputError as error:
        sys.stderr.write(f"ibsi_compliance: error: {error}\n")
        return 2
    rows = ibsi.compare(values, reference)
    source = "shared/data/ibsi/digital_phantom_reference_values.csv"
    write_text(ibsi.markdown(rows, reference_source=source), args.output)
    matched = sum(row.status == "match" for row in rows)
    print(f"{args.output}: {len(rows)} IBSI features, {matched} match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
