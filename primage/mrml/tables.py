"""Table nodes <-> lists of row dictionaries (one dictionary per row, column name -> value).

A column whose values are all numbers (or missing) is stored as ``vtkDoubleArray``
(missing values become NaN); any other column is stored as text (missing values become
"").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import vtk

from primage.errors import PrimageInputError
from primage.mrml.volumes import node_label


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _column_names(rows: Sequence[Mapping]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if str(key) not in seen:
                seen.add(str(key))
                names.append(str(key))
    return names


def table_node_from_rows(
    rows: Sequence[Mapping],
    scene,
    name: str = "table",
    node=None,
    column_units: Mapping[str, str] | None = None,
):
    """Table node with one row per dictionary (created in ``scene`` unless ``node`` given).

    Columns follow the keys of the first row, then new keys in the order they appear.
    ``column_units`` sets Slicer's unit label of columns (e.g. ``{"ADC": "mm^2/s"}``).
    An existing ``node`` is emptied first.
    """
    rows = [dict(row) for row in rows]
    names = _column_names(rows)
    unknown = set(column_units or {}) - set(names)
    if unknown:
        raise PrimageInputError(f"units given for columns that do not exist: {sorted(unknown)}")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    else:
        if not node.IsA("vtkMRMLTableNode"):
            raise PrimageInputError(f"output node {node_label(node)} is not a table node")
        node.RemoveAllColumns()
        node.SetName(name)
    table = vtk.vtkTable()
    for column in names:
        values = [row.get(column) for row in rows]
        if all(value is None or _is_number(value) for value in values):
            array = vtk.vtkDoubleArray()
            array.SetNumberOfTuples(len(values))
            for index, value in enumerate(values):
                array.SetValue(index, math.nan if value is None else float(value))
        else:
            array = vtk.vtkStringArray()
            array.SetNumberOfValues(len(values))
            for index, value in enumerate(values):
                array.SetValue(index, "" if value is None else str(value))
        array.SetName(column)
        table.AddColumn(array)
    node.SetAndObserveTable(table)
    for column, unit in (column_units or {}).items():
        node.SetColumnUnitLabel(column, str(unit))
    return node


def rows_from_table_node(node) -> list[dict]:
    """Rows of a table node as dictionaries: numbers as float (int for integer columns), text as str."""
    if node is None or not node.IsA("vtkMRMLTableNode"):
        raise PrimageInputError(f"{node_label(node)} is not a table node")
    table = node.GetTable()
    if table is None:
        return []
    columns = [table.GetColumn(index) for index in range(table.GetNumberOfColumns())]
    rows = []
    for row_index in range(table.GetNumberOfRows()):
        row = {}
        for column in columns:
            if isinstance(column, vtk.vtkDataArray):
                value = column.GetTuple1(row_index)
                if column.GetDataType() not in (vtk.VTK_FLOAT, vtk.VTK_DOUBLE):
                    value = int(value)
            else:
                value = column.GetValue(row_index)
                value = str(value) if not isinstance(value, str) else value
            row[column.GetName()] = value
        rows.append(row)
    return rows
