"""Cohort outputs: ``features.csv`` (one row per case) and ``report.html`` (self-contained).

Both are built from the cases' ``summary.json`` and figures, after every case finished, so
they are rebuilt on each run (cheap) and always match the case folders. The report embeds
its PNGs as base64 data; review and failed cases come first in its QC table. Only the case
identifier (the folder name) and ``case.json``'s safe metadata appear, never a name from
a file header.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from primage import __version__
from primage.io import write_json, write_text

#: ROI statistics copied into features.csv for each kinetic map.
ROI_STATISTICS = ("mean", "median", "sd", "p25", "p75")
STATUS_ORDER = {"failed": 0, "review": 1, "ok": 2}


def _number(value: Any) -> Any:
    return "" if value is None else value


def feature_row(summary: dict[str, Any]) -> dict[str, Any]:
    """One case's row of ``features.csv``."""
    row: dict[str, Any] = {
        "case": summary["case_id"],
        "status": summary["status"],
        "failed_step": summary["failed_step"],
        "message": summary["message"],
    }
    # Metadata never replaces a fixed column (e.g. a case.json "status" key).
    row.update({k: v for k, v in summary.get("metadata", {}).items() if k not in row})
    row["tumour_volume_ml"] = _number(summary.get("tumour", {}).get("volume_ml"))
    for role, qc in summary.get("registration", {}).items():
        row[f"qc_{role}_verdict"] = qc.get("verdict") or ""
        row[f"qc_{role}_alignment"] = qc.get("alignment") or ""
        row[f"qc_{role}_alignment_reason"] = qc.get("alignment_reason") or ""
        row[f"qc_{role}_displacement_mm"] = _number(qc.get("displacement_mm"))
        row[f"qc_{role}_mutual_information"] = _number(qc.get("mutual_information_after"))
        if qc.get("dice_after") is not None:
            row[f"qc_{role}_dice"] = qc["dice_after"]
    for unit, data in summary.get("kinetics", {}).items():
        if unit.startswith("fcf_"):
            parameter = unit[len("fcf_") :]
            for habitat in data.get("habitats", []):
                prefix = f"fcf_{parameter}_habitat{habitat['label']}"
                row[f"{prefix}_value"] = _number(habitat.get("value"))
                row[f"{prefix}_se"] = _number(habitat.get("se"))
                # Share of the tumour's voxels in this habitat (kept after the confidence cut).
                total = data.get("voxels_in_mask") or 0
                row[f"{prefix}_fraction"] = habitat["voxels_kept"] / total if total else ""
            continue
        for name, stats in data.get("tumour", {}).items():
            for statistic in ROI_STATISTICS:
                if statistic in stats:
                    row[f"{name}_tumour_{statistic}"] = stats[statistic]
    for image, features in summary.get("radiomics", {}).items():
        for feature, value in features.items():
            row[f"{image}_{feature}"] = value
    return row


def feature_rows(summaries: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns (first-seen order over the cases) and rows of ``features.csv``."""
    rows = [feature_row(s) for s in summaries]
    columns: list[str] = []
    seen = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    return columns, rows


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure(path: Path, caption: str, wide: bool = False) -> str:
    if not path.is_file():
        return ""
    image = _image(path, caption)
    if wide:  # the registration snapshots are small three-panel strips: show them larger
        image = image.replace("<img ", '<img class="wide" ', 1)
    return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _format(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3}.failed{background:#fdd}.review{background:#ffe9b3}.ok{background:#e6f4e6}
figure{display:inline-block;margin:.4em;vertical-align:top;max-width:520px}
figcaption{font-size:.8em;color:#555}img{image-rendering:pixelated;max-width:100%}
img.wide{width:500px}
section{border-top:2px solid #ddd;margin-top:1.5em}
"""


def _registration_cell(qc: dict[str, Any]) -> str:
    """Verdict, then how the series reached the reference grid and why."""
    text = html.escape(qc.get("verdict") or "")
    if qc.get("alignment"):
        moved = qc.get("displacement_mm")
        shift = f"; mean shift {moved:.2f} mm" if isinstance(moved, (int, float)) else ""
        text += (
            f"<br><small>{html.escape(qc['alignment'])}: "
            f"{html.escape(qc.get('alignment_reason') or '')}{shift}</small>"
        )
    return text


def report_html(summaries: list[dict], output_dir: Path, config: dict, run: dict) -> str:
    """The HTML text of ``report.html``."""
    ordered = sorted(summaries, key=lambda s: (STATUS_ORDER.get(s["status"], 3), s["case_id"]))
    counts = {state: sum(s["status"] == state for s in summaries) for state in STATUS_ORDER}
    roles = sorted({role for s in summaries for role in s.get("registration", {})})
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>PRIMAGE cohort report</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>PRIMAGE cohort report</h1>",
        f"<p>{len(summaries)} case(s): {counts['ok']} ok, {counts['review']} to review, "
        f"{counts['failed']} failed. Steps: {html.escape(', '.join(config['steps']))}; "
        f"reference series {html.escape(config['reference'])}. primage {__version__}; "
        f"{html.escape(str(run.get('scheduler')))}, workers {html.escape(str(run.get('workers')))}; "
        f"{run.get('seconds', 0):.1f} s; {html.escape(run.get('finished', ''))}.</p>",
        "<p>Tables: <code>features.csv</code> (one row per case), <code>status.csv</code> "
        "(every step). Per case: <code>&lt;case&gt;/provenance.json</code>, "
        "<code>&lt;case&gt;/error.log</code> for failures.</p>",
        "<h2>Quality control</h2>",
        "<table><tr><th>case</th><th>status</th><th>step / reason</th>"
        + "".join(f"<th>registration {html.escape(r)}</th>" for r in roles)
        + "<th>tumour (ml)</th><th>ADC median (mm²/s)</th><th>iAUC60 median (s)</th>"
        "<th>FCF ADC habitats (mm²/s)</th><th>seconds (this run)</th></tr>",
    ]
    for s in ordered:
        kinetics = s.get("kinetics", {})
        adc = kinetics.get("adc", {}).get("tumour", {}).get("adc", {}).get("median")
        iauc = kinetics.get("dce", {}).get("tumour", {}).get("iauc60", {}).get("median")
        habitats = ", ".join(
            _format(h.get("value")) for h in kinetics.get("fcf_adc", {}).get("habitats", [])
        )
        reason = f"{s['failed_step']}: {s['message']}" if s["failed_step"] else s["message"]
        cells = [
            f'<a href="#case-{html.escape(s["case_id"])}">{html.escape(s["case_id"])}</a>',
            html.escape(s["status"]),
            html.escape(reason),
            *(_registration_cell(s.get("registration", {}).get(r, {})) for r in roles),
            _format(s.get("tumour", {}).get("volume_ml")),
            _format(adc),
            _format(iauc),
            habitats,
            _format(s.get("seconds"), 3),
        ]
        lines.append(
            f'<tr class="{html.escape(s["status"])}">'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    lines.append("</table>")
    for s in ordered:
        case_dir = output_dir / s["case_id"]
        lines.append(f'<section id="case-{html.escape(s["case_id"])}">')
        lines.append(f"<h2>{html.escape(s['case_id'])} — {html.escape(s['status'])}</h2>")
        if s["message"]:
            lines.append(
                f"<p><b>{html.escape(s['failed_step'] or 'review')}</b>: {html.escape(s['message'])}</p>"
            )
        if s.get("metadata"):
            meta = ", ".join(f"{k}: {v}" for k, v in s["metadata"].items())
            lines.append(f"<p>{html.escape(meta)}</p>")
        if s.get("notes"):
            lines.append(
                "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in s["notes"]) + "</ul>"
            )
        figures = s.get("figures", {})
        if "tumour" in figures:
            lines.append(
                _figure(case_dir / figures["tumour"]["file"], figures["tumour"]["caption"])
            )
        for key, file in s.get("snapshots", {}).items():
            if key.endswith("_fusion_after"):
                role = key[: -len("_fusion_after")]
                verdict = s.get("registration", {}).get(role, {}).get("verdict", "")
                caption = (
                    f"Registration {role} onto the reference (after; QC {verdict}): fusion of "
                    "axial | coronal | sagittal slices through the tumour."
                )
                lines.append(_figure(case_dir / file, caption, wide=True))
        for name, item in figures.items():
            if name != "tumour":
                lines.append(_figure(case_dir / item["file"], item["caption"]))
        lines.append("</section>")
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


def write_cohort_outputs(result, config: dict, run: dict) -> dict[str, Path]:
    """Write ``features.csv``, ``report.html`` and ``run.json`` into the output folder."""
    from primage.radiomics.tables import write_csv

    output_dir = result.output_dir
    run = dict(run, seconds=result.seconds, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    columns, rows = feature_rows(result.summaries)
    paths = {"features": write_csv(rows, output_dir / "features.csv", columns)}
    paths["report"] = write_text(
        report_html(result.summaries, output_dir, config, run), output_dir / "report.html"
    )
    paths["run"] = write_json(
        {
            **run,
            "primage": __version__,
            "cases": len(result.summaries),
            "failed": result.failed,
            "exit_code": result.exit_code,
        },
        output_dir / "run.json",
    )
    return paths
