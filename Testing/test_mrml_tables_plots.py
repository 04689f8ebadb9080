"""Table nodes <-> row dictionaries, and plot charts from curves."""

import csv
import math

import numpy as np
import pytest
import slicer
import vtk

from primage.errors import PrimageInputError
from primage.mrml.plots import plot_chart_from_curves
from primage.mrml.tables import rows_from_table_node, table_node_from_rows

ROWS = [
    {"segment": "tumour", "ADC": 1.25e-3, "volume_ml": 12.5, "voxels": 1000},
    {"segment": "necrosis", "ADC": 2.5e-3, "volume_ml": np.float32(1.5), "voxels": np.int64(120)},
    {"segment": "oedema", "ADC": None, "voxels": 7, "comment": "no diffusion data"},
]


def test_rows_round_trip_with_types_order_and_missing_values(mrml_scene):
    node = table_node_from_rows(ROWS, mrml_scene, name="features", column_units={"ADC": "mm2/s"})
    table = node.GetTable()
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert names == ["segment", "ADC", "volume_ml", "voxels", "comment"]  # first row, then new
    assert isinstance(table.GetColumnByName("ADC"), vtk.vtkDoubleArray)
    assert isinstance(table.GetColumnByName("segment"), vtk.vtkStringArray)
    assert node.GetColumnUnitLabel("ADC") == "mm2/s"

    rows = rows_from_table_node(node)
    assert [row["segment"] for row in rows] == ["tumour", "necrosis", "oedema"]
    assert rows[0]["ADC"] == 1.25e-3 and rows[1]["voxels"] == 120.0
    assert rows[1]["volume_ml"] == 1.5
    assert math.isnan(rows[2]["ADC"]) and math.isnan(rows[2]["volume_ml"])
    assert rows[0]["comment"] == "" and rows[2]["comment"] == "no diffusion data"


def test_table_saved_by_slicer_has_the_values(tmp_path, mrml_scene):
    node = table_node_from_rows(ROWS[:2], mrml_scene, name="features")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    storage.SetFileName(str(tmp_path / "features.csv"))
    assert storage.WriteData(node) == 1
    with open(tmp_path / "features.csv", newline="") as stream:
        written = list(csv.DictReader(stream))
    assert [row["segment"] for row in written] == ["tumour", "necrosis"]
    assert float(written[0]["ADC"]) == pytest.approx(1.25e-3)
    assert float(written[1]["voxels"]) == 120.0


def test_refilling_a_table_and_integer_columns_from_elsewhere(mrml_scene):
    node = table_node_from_rows(ROWS, mrml_scene)
    assert table_node_from_rows([{"a": 1.0}], mrml_scene, name="small", node=node) is node
    assert rows_from_table_node(node) == [{"a": 1.0}]
    # A table made by other code with an integer column reads back as int.
    other = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode")
    column = vtk.vtkIntArray()
    column.SetName("count")
    for value in (3, 4):
        column.InsertNextValue(value)
    other.AddColumn(column)
    assert rows_from_table_node(other) == [{"count": 3}, {"count": 4}]
    with pytest.raises(PrimageInputError, match="do not exist"):
        table_node_from_rows(ROWS, mrml_scene, column_units={"T2": "ms"})
    with pytest.raises(PrimageInputError, match="not a table node"):
        rows_from_table_node(mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))


def _series(scene, chart):
    return [
        scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(i))
        for i in range(chart.GetNumberOfPlotSeriesNodes())
    ]


def test_chart_from_curves_of_different_lengths(mrml_scene):
    b = np.array([0.0, 50.0, 400.0, 800.0])
    fit_b = np.linspace(0.0, 800.0, 41)
    curves = {"measured": (b, np.exp(-b * 1e-3)), "fit": (fit_b, np.exp(-fit_b * 1e-3))}
    chart = plot_chart_from_curves(
        curves,
        mrml_scene,
        title="Tumour signal",
        x_label="b (s/mm^2)",
        y_label="S/S0",
        points_only={"measured"},
    )
    assert chart.GetTitle() == "Tumour signal"
    assert (chart.GetXAxisTitle(), chart.GetYAxisTitle()) == ("b (s/mm^2)", "S/S0")
    series = _series(mrml_scene, chart)
    assert [s.GetName() for s in series] == ["measured", "fit"]
    for node, (x, y) in zip(series, curves.values(), strict=True):
        table = node.GetTableNode()
        np.testing.assert_array_equal(
            slicer.util.arrayFromTableColumn(table, node.GetXColumnName()), x
        )
        np.testing.assert_array_equal(
            slicer.util.arrayFromTableColumn(table, node.GetYColumnName()), y
        )
        assert node.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    assert series[0].GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleNone
    assert series[1].GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert series[0].GetColor() != series[1].GetColor()


def test_refilling_a_chart_removes_only_its_own_nodes(mrml_scene):
    unrelated = table_node_from_rows([{"a": 1}], mrml_scene, name="unrelated")
    chart = plot_chart_from_curves(
        {"a": ([0, 1], [1, 2]), "b": ([0, 1], [2, 3])},
        mrml_scene,
        title="t",
        x_label="x",
        y_label="y",
    )
    again = plot_chart_from_curves(
        {"c": ([0, 1, 2], [1, 1, 1])},
        mrml_scene,
        title="t2",
        x_label="x",
        y_label="y",
        chart_node=chart,
    )
    assert again is chart and [s.GetName() for s in _series(mrml_scene, chart)] == ["c"]
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 1
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2  # c's table + unrelated
    assert mrml_scene.GetNodeByID(unrelated.GetID()) is unrelated
    with pytest.raises(PrimageInputError, match="same non-zero length"):
        plot_chart_from_curves(
            {"bad": ([0, 1], [1])}, mrml_scene, title="t", x_label="x", y_label="y"
        )
    with pytest.raises(PrimageInputError, match="no curves"):
        plot_chart_from_curves({}, mrml_scene, title="t", x_label="x", y_label="y")
