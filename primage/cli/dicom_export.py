"""``primage dicom export``: results as DICOM SEG, Parametric Maps and a TID 1500 SR.

The objects reference the source series (the folder of the series the results are on) and
carry only the pseudonym as identity. Results must be on the series' voxel grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from primage.errors import PrimageInputError


def add_export_action(actions) -> None:
    """Add ``export`` to the ``primage dicom`` actions."""
    from primage.dicom.export import MAPS

    export = actions.add_parser(
        "export",
        help="write results as DICOM SEG, Parametric Maps and a Structured Report",
        description="Write the results of one case as DICOM objects that reference the source "
        "series SERIES_DIR: a DICOM SEG of the tumour (--tumour) and of each FCF habitat image "
        "(--habitats), a Parametric Map per map (--map, float32 with UCUM units), and a "
        "Comprehensive 3D SR (TID 1500) with the tumour volume, the ROI mean/median/SD of each "
        "map, the habitat values (fcf_<p>.json beside the habitat image) and radiomic features "
        "(--features). Every image must be on the series' voxel grid. Identity: only the "
        "pseudonym (--pseudonym, or --pseudonym-map / --secret-file as for assemble).",
    )
    export.add_argument(
        "--source", "-s", required=True, metavar="SERIES_DIR", help="folder of the source series"
    )
    export.add_argument("--series-uid", help="the source series, when SERIES_DIR holds several")
    export.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="folder for the DICOM objects"
    )
    export.add_argument(
        "--case",
        metavar="CASE_DIR",
        help="a pipeline case folder (OUT/<case>): its tumour, kinetics maps, habitats and "
        "radiomics tables (the options below add to or replace them)",
    )
    export.add_argument("--tumour", metavar="MASK.nii.gz", help="tumour label image")
    export.add_argument(
        "--segment-name",
        action="append",
        default=[],
        metavar="LABEL=NAME",
        help="name of a tumour label (default 'tumour'; repeatable)",
    )
    export.add_argument(
        "--tumour-algorithm",
        choices=["MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"],
        default="SEMIAUTOMATIC",
        help="how the tumour was drawn (SEG algorithm type; default SEMIAUTOMATIC)",
    )
    export.add_argument(
        "--habitats",
        action="append",
        default=[],
        metavar="HABITATS.nii.gz",
        help="FCF habitat label image (repeatable)",
    )
    export.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="[NAME=]MAP.nii.gz",
        help=f"parameter map (repeatable); NAME defaults to the file name; known: {', '.join(sorted(MAPS))}",
    )
    export.add_argument(
        "--features",
        action="append",
        default=[],
        metavar="FEATURES.csv",
        help="radiomics table of the tumour (repeatable)",
    )
    export.add_argument("--pseudonym", help="the patient's pseudonym (PatientName and PatientID)")
    export.add_argument("--pseudonym-map", metavar="MAP.csv", help="patient_id,pseudonym CSV")
    export.add_argument(
        "--secret-file", metavar="FILE", help="secret for the keyed-hash pseudonyms"
    )
    export.add_argument(
        "--deflate",
        action="store_true",
        help="write the lossless Deflated Explicit VR Little Endian transfer syntax (SEG ~15x "
        "smaller; not every archive accepts it)",
    )
    export.add_argument("--quiet", "-q", action="store_true", help="no summary output")
    export.set_defaults(handler=run_export)


def _maps(values: list[str]) -> dict[str, str]:
    from primage.dicom.export import map_kind
    from primage.io import image_stem

    maps: dict[str, str] = {}
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        name = name.strip() or image_stem(path)
        map_kind(name)
        if name in maps:
            raise PrimageInputError(f"map {name!r} given twice")
        maps[name] = path
    return maps


def _names(values: list[str]) -> dict[int, str]:
    names = {}
    for value in values:
        label, _, name = value.partition("=")
        try:
            names[int(label)] = name.strip()
        except ValueError:
            raise PrimageInputError(f"--segment-name must be LABEL=NAME, not {value!r}") from None
        if not name.strip():
            raise PrimageInputError(f"--segment-name {value!r} has an empty name")
    return names


def _pseudonym(args: argparse.Namespace):
    """The pseudonym, or the pseudonymiser of --pseudonym-map / --secret-file."""
    if args.pseudonym is not None:
        if args.pseudonym_map or args.secret_file:
            raise PrimageInputError("give --pseudonym or --pseudonym-map / --secret-file, not both")
        return args.pseudonym
    from primage.dicom.pseudonym import pseudonymiser

    return pseudonymiser(args.pseudonym_map, args.secret_file)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``primage dicom export``."""
    from primage.dicom.export import case_results, export_results

    found = (
        case_results(args.case)
        if args.case
        else {"tumour": None, "habitats": [], "maps": {}, "features": []}
    )
    maps = {**found["maps"], **_maps(args.map)}
    names = _names(args.segment_name)
    if not Path(args.source).is_dir():
        raise PrimageInputError(f"source series folder does not exist: {args.source}")
    pseudonym = _pseudonym(args)
    result = export_results(
        args.source,
        args.output,
        pseudonym=pseudonym,
        series_uid=args.series_uid,
        tumour=args.tumour or found["tumour"],
        tumour_names=names,
        tumour_algorithm=args.tumour_algorithm,
        habitats=[*found["habitats"], *args.habitats],
        maps=maps,
        features=[*found["features"], *args.features],
        deflate=args.deflate,
    )
    if not args.quiet:
        for obj in result.objects:
            sys.stderr.write(
                f"primage: {obj.kind.upper()} {obj.name}: {obj.path} ({obj.bytes / 1024:.1f} KiB, "
                f"{obj.build_s + obj.write_s:.2f} s; read back {obj.read_back_s:.2f} s)\n"
            )
        sys.stderr.write(
            f"primage: wrote {len(result.objects)} DICOM objects ({result.measurements} "
            f"measurements in the SR) and {result.manifest}\n"
        )
    return 0
