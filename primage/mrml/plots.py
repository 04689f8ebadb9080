"""Curves (e.g. signal against b-value or time) as a Slicer plot chart.

Each curve gets its own small table node (columns "x" and "y", so curves may have
different lengths) and a ``vtkMRMLPlotSeriesNode``; the chart node lists the series.
In Slicer, show the chart with ``slicer.modules.plots.logic().ShowChartInLayout(chart)``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import slicer

from primage.errors import PrimageInputError
from primage.mrml.tables import table_node_from_rows
from primage.mrml.volumes import node_label

#: Attribute marking series and table nodes created for a chart (value: the chart node ID),
#: so that refilling the chart removes them and nothing else.
OWNER_ATTRIBUTE = "PRIMAGE.chart"

#: Distinct colours (r, g, b in 0..1) used in order for the curves.
PALETTE = (
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.50, 0.50, 0.50),
)


def _remove_owned_nodes(chart_node) -> None:
    scene = chart_node.GetScene()
    series_ids = [
        chart_node.GetNthPlotSeriesNodeID(i) for i in range(chart_node.GetNumberOfPlotSeriesNodes())
    ]
    chart_node.RemoveAllPlotSeriesNodeIDs()
    for series_id in series_ids:
        series = scene.GetNodeByID(series_id)
        if series is None or series.GetAttribute(OWNER_ATTRIBUTE) != chart_node.GetID():
            continue
        table = series.GetTableNode()
        scene.RemoveNode(series)
        if table is not None and table.GetAttribute(OWNER_ATTRIBUTE) == chart_node.GetID():
            scene.RemoveNode(table)


def plot_chart_from_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    scene,
    title: str,
    x_label: str,
    y_label: str,
    chart_node=None,
    *,
    points_only: Collection[str] = (),
):
    """Plot chart with one line per curve (name -> (x, y) arrays of equal length).

    Curves named in ``points_only`` (e.g. measured data next to a fitted model) are drawn
    as markers without a line. A given ``chart_node`` is refilled: the series and tables it
    got from an earlier call are removed. Axis labels should carry units ("b (s/mm^2)").
    """
    if not curves:
        raise PrimageInputError("no curves to plot")
    checked = {}
    for name, (x, y) in curves.items():
        x = np.asarray(x, dtype=float).ravel()
        y = np.asarray(y, dtype=float).ravel()
        if x.size != y.size or x.size == 0:
            raise PrimageInputError(
                f"curve {name!r} needs x and y of the same non-zero length ({x.size} and {y.size})"
            )
        checked[str(name)] = (x, y)
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", title)
    else:
        if not chart_node.IsA("vtkMRMLPlotChartNode"):
            raise PrimageInputError(
                f"output node {node_label(chart_node)} is not a plot chart node"
            )
        _remove_owned_nodes(chart_node)
        scene = chart_node.GetScene()
    chart_node.SetTitle(title)
    chart_node.SetXAxisTitle(x_label)
    chart_node.SetYAxisTitle(y_label)
    for index, (name, (x, y)) in enumerate(checked.items()):
        rows = [{"x": float(a), "y": float(b)} for a, b in zip(x, y, strict=True)]
        table = table_node_from_rows(rows, scene, name=f"{title}: {name}")
        table.SetAttribute(OWNER_ATTRIBUTE, chart_node.GetID())
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
        series.SetAttribute(OWNER_ATTRIBUTE, chart_node.GetID())
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("x")
        series.SetYColumnName("y")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetColor(*PALETTE[index % len(PALETTE)])
        if name in points_only:
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        else:
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart_node
