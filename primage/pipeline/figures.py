"""PNG figures of the report, drawn with numpy and written with the standard library.

No plotting package: a PNG is a zlib stream of RGB rows (:func:`png_bytes`), images are
windowed slices with a tumour contour, maps use a small perceptual colour scale, and fit
curves are points and polylines on a canvas. Axis labels and ranges go into the report's
captions (``figures.json``), which keeps the drawing code small and the text searchable.
Slices are shown in voxel order (row = second image axis), as a quick-look, not a
diagnostic display.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from primage.io import read_image, write_json

#: Anchor colours of the map colour scale (viridis-like, dark blue -> yellow).
MAP_COLOURS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float
)
#: Colours of curves and habitats, in order.
SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
TARGET_WIDTH = 240  # px of an image panel


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG file content of an (h, w, 3) uint8 array (8-bit RGB, no interlace)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(png_bytes(rgb))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def grey(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Window ``values`` to [low, high] as grey RGB uint8."""
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def colour_scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``values`` to the colour scale (:data:`MAP_COLOURS`) over [low, high]."""
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0) * (len(MAP_COLOURS) - 1)
    index = np.minimum(scaled.astype(int), len(MAP_COLOURS) - 2)
    fraction = (scaled - index)[..., None]
    rgb = MAP_COLOURS[index] * (1 - fraction) + MAP_COLOURS[index + 1] * fraction
    return rgb.astype(np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D boolean mask (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def square_pixels(rgb: np.ndarray, spacing_xy: tuple[float, float]) -> np.ndarray:
    """Repeat rows and columns so pixels are square and the panel ~:data:`TARGET_WIDTH` wide."""
    sx, sy = spacing_xy
    unit = min(sx, sy)
    width_mm = rgb.shape[1] * sx
    scale = max(TARGET_WIDTH / (width_mm / unit), 1.0)
    zx = max(int(round(scale * sx / unit)), 1)
    zy = max(int(round(scale * sy / unit)), 1)
    return np.repeat(np.repeat(rgb, zy, axis=0), zx, axis=1)


def tumour_slice(mask: np.ndarray) -> int:
    """The axial slice (first array axis) with the largest tumour area (middle if empty)."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.any() else mask.shape[0] // 2


def _window(values: np.ndarray, where: np.ndarray | None = None) -> tuple[float, float]:
    data = values[where] if where is not None and where.any() else values
    data = data[np.isfinite(data)]
    if data.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(data, [1, 99])
    return float(low), float(high if high > low else low + 1)


def _paint(rgb: np.ndarray, pixels: np.ndarray, colour) -> np.ndarray:
    rgb = rgb.copy()
    rgb[pixels] = colour
    return rgb


def image_panel(image: sitk.Image, mask: np.ndarray | None, z: int) -> np.ndarray:
    """Axial slice ``z`` of a 3D image, windowed 1-99 %, with the tumour contour in red."""
    array = sitk.GetArrayFromImage(image).astype(float)[z]
    rgb = grey(array, *_window(array))
    if mask is not None:
        rgb = _paint(rgb, contour(mask[z]), (230, 30, 30))
    return square_pixels(rgb, image.GetSpacing()[:2])


def map_panel(
    image: sitk.Image,
    mask: np.ndarray | None,
    z: int,
    region: np.ndarray | None,
    background: sitk.Image | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """A parameter map slice on the colour scale (window: 1-99 % inside ``region``) over
    the dimmed ``background`` where there is no value, the tumour contour in white;
    returns the panel and the window."""
    array = sitk.GetArrayFromImage(image).astype(float)[z]
    window = _window(array, (array != 0) & region[z] if region is not None else array != 0)
    rgb = colour_scale(array, *window)
    rgb[array == 0] = 0  # no fit
    if background is not None and background.GetSize() == image.GetSize():
        grey_slice = sitk.GetArrayFromImage(background).astype(float)[z]
        dimmed = grey(grey_slice, *_window(grey_slice)) // 2
        rgb[array == 0] = dimmed[array == 0]
    if mask is not None:
        rgb = _paint(rgb, contour(mask[z]), (255, 255, 255))
    return square_pixels(rgb, image.GetSpacing()[:2]), window


def label_panel(background: sitk.Image, labels: sitk.Image, z: int) -> np.ndarray:
    """Habitat labels (1, 2, ...) over the grey background slice."""
    array = sitk.GetArrayFromImage(background).astype(float)[z]
    rgb = grey(array, *_window(array)).astype(float)
    values = sitk.GetArrayFromImage(labels)[z]
    for label in np.unique(values[values > 0]):
        colour = np.array(SERIES_COLOURS[(int(label) - 1) % len(SERIES_COLOURS)], dtype=float)
        where = values == label
        rgb[where] = 0.4 * rgb[where] + 0.6 * colour
    return square_pixels(rgb.astype(np.uint8), background.GetSpacing()[:2])


def _line(canvas: np.ndarray, x0, y0, x1, y1, colour) -> None:
    steps = int(max(abs(x1 - x0), abs(y1 - y0), 1)) * 2
    xs = np.linspace(x0, x1, steps + 1).round().astype(int)
    ys = np.linspace(y0, y1, steps + 1).round().astype(int)
    keep = (xs >= 0) & (xs < canvas.shape[1]) & (ys >= 0) & (ys < canvas.shape[0])
    canvas[ys[keep], xs[keep]] = colour


def curve_panel(
    series: list[dict[str, Any]], size: tuple[int, int] = (320, 200)
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Curves on a white canvas: each entry ``{"x", "y"}`` as points and, with ``"x_fit"`` /
    ``"fit"``, a line (or a line through the points with ``"line": True``). Returns the
    panel and the axis ranges ``{"x": [min, max], "y": [min, max]}``."""
    width, height = size
    margin = 12
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    xs = np.concatenate([np.asarray(s[k], float) for s in series for k in ("x", "x_fit") if k in s])
    ys = np.concatenate([np.asarray(s[k], float) for s in series for k in ("y", "fit") if k in s])
    finite_x, finite_y = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
    x_range = [float(finite_x.min()), float(finite_x.max())] if finite_x.size else [0.0, 1.0]
    y_range = [float(finite_y.min()), float(finite_y.max())] if finite_y.size else [0.0, 1.0]
    pad = 0.05 * ((y_range[1] - y_range[0]) or 1.0)
    y_low, y_high = y_range[0] - pad, y_range[1] + pad

    def px(x):
        span = (x_range[1] - x_range[0]) or 1.0
        return margin + (np.asarray(x, float) - x_range[0]) / span * (width - 2 * margin)

    def py(y):
        return (
            height
            - margin
            - (np.asarray(y, float) - y_low) / (y_high - y_low) * (height - 2 * margin)
        )

    axis = (90, 90, 90)
    _line(canvas, margin, height - margin, width - margin, height - margin, axis)
    _line(canvas, margin, margin, margin, height - margin, axis)
    for index, entry in enumerate(series):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        x, y = px(entry["x"]), py(entry["y"])
        ok = np.isfinite(x) & np.isfinite(y)
        if entry.get("line"):
            for a, b in zip(np.flatnonzero(ok)[:-1], np.flatnonzero(ok)[1:], strict=True):
                _line(canvas, x[a], y[a], x[b], y[b], colour)
        for cx, cy in zip(x[ok].round().astype(int), y[ok].round().astype(int), strict=True):
            canvas[max(cy - 2, 0) : cy + 3, max(cx - 2, 0) : cx + 3] = colour
        if "x_fit" in entry:
            fx, fy = px(entry["x_fit"]), py(entry["fit"])
            for a in range(len(fx) - 1):
                if np.isfinite([fx[a], fy[a], fx[a + 1], fy[a + 1]]).all():
                    _line(canvas, fx[a], fy[a], fx[a + 1], fy[a + 1], colour)
    return canvas, {"x": x_range, "y": y_range}


def _load_json(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text(encoding="utf-8"))


def case_figures(folder: Path, inputs: dict[str, Path]) -> dict[str, Path]:
    """Draw one case's figures into ``folder``; returns name -> file, with ``figures.json``
    (the captions: what each shows, windows and axis ranges)."""
    reference = read_image(inputs["reference"], role="reference")
    mask = None
    if "mask" in inputs:
        mask = sitk.GetArrayFromImage(read_image(inputs["mask"], role="tumour mask")) > 0
    z = tumour_slice(mask) if mask is not None else reference.GetSize()[2] // 2
    region = None
    if mask is not None:
        from scipy import ndimage

        region = ndimage.binary_dilation(mask, iterations=2)
    outputs: dict[str, Path] = {}
    captions: dict[str, str] = {}
    outputs["tumour"] = write_png(image_panel(reference, mask, z), folder / "tumour.png")
    captions["tumour"] = f"Reference series, slice {z}, tumour contour in red."
    units = {"adc": "mm^2/s", "iauc60": "s", "ktrans": "1/min"}
    for name in ("adc", "iauc60", "ktrans"):
        if name in inputs:
            panel, window = map_panel(
                read_image(inputs[name], role=name), mask, z, region, reference
            )
            outputs[name] = write_png(panel, folder / f"{name}.png")
            captions[name] = (
                f"{name.upper()} map ({units[name]}), slice {z}; colour scale dark blue "
                f"{window[0]:.4g} to yellow {window[1]:.4g}; not fitted: dimmed reference; tumour contour white."
            )
    if "fcf_adc_habitats" in inputs:
        labels = read_image(inputs["fcf_adc_habitats"], role="habitats")
        outputs["fcf_adc_habitats"] = write_png(
            label_panel(reference, labels, z), folder / "fcf_adc_habitats.png"
        )
        captions["fcf_adc_habitats"] = (
            f"Fit-Cluster-Fit ADC habitats, slice {z}: blue = habitat 1 (lowest ADC), red = 2."
        )
    curves = []
    if "summary_adc" in inputs:
        curve = _load_json(inputs["summary_adc"])["curve"]
        curves.append(
            ("adc_fit", [curve], "b (s/mm^2)", "tumour mean signal (points) and ADC fit (line)")
        )
    if "summary_fcf_adc" in inputs:
        entries = _load_json(inputs["summary_fcf_adc"])["curves"]
        curves.append(
            (
                "fcf_adc_fit",
                entries,
                "b (s/mm^2)",
                "mean signal and fit per habitat (blue 1, red 2, ...)",
            )
        )
    if "summary_dce" in inputs:
        curve = dict(_load_json(inputs["summary_dce"])["curve"], line=True)
        curves.append(("dce_curve", [curve], "time (s)", "tumour mean relative enhancement"))
    if "summary_tofts" in inputs:
        curve = dict(_load_json(inputs["summary_tofts"])["curve"], line=True)
        curves.append(("tofts_curve", [curve], "time (s)", "tumour mean concentration (mM)"))
    for name, series, x_label, what in curves:
        usable = [s for s in series if len(s.get("x", [])) and len(s.get("y", []))]
        if not usable:
            continue
        panel, ranges = curve_panel(usable)
        outputs[name] = write_png(panel, folder / f"{name}.png")
        captions[name] = (
            f"{what}; x: {x_label} {ranges['x'][0]:.4g} to {ranges['x'][1]:.4g}; "
            f"y: {ranges['y'][0]:.4g} to {ranges['y'][1]:.4g}."
        )
    outputs["captions"] = write_json(captions, folder / "figures.json")
    return outputs
