"""Static checks of the Slicer side of the extension.

The Slicer application cannot run here, so the module files, their Qt Designer .ui files and
the CMake build are checked by reading them: Python with :mod:`ast`, .ui with ElementTree,
CMake with a small command parser. Each checker returns a list of problems (empty when all
is well), so the same checkers are also shown to catch deliberately broken snippets.

The widget/type rules follow Slicer's ``slicer.parameterNodeWrapper.guiConnectors``, which
matches exact widget classes: e.g. a float binds to QDoubleSpinBox or ctkSliderWidget (a
ctkSliderWidget needs a bounded range), a QComboBox needs a ``Choice`` annotation and gets
its items from it, a node binds to qMRMLNodeComboBox, which gets its nodeTypes from the type.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIRS = sorted(p for p in REPO.glob("Primage*") if p.is_dir())
MODULE_NAMES = [p.name for p in MODULE_DIRS]
SCRIPT = REPO / "scripts" / "primage_slicer.py"

# Parameter-node fields that are deliberately not shown in the GUI, per module. Keep empty
# unless a field is truly internal state.
NON_GUI_FIELDS: dict[str, set[str]] = {}

# Engine preset folders of modules whose parameter node has a `preset` field; every choice
# except "custom" must be a preset file there.
PRESET_DIRS = {
    "PrimagePreprocessing": REPO / "primage" / "presets" / "preprocessing",
    "PrimageRegistration": REPO / "primage" / "presets" / "registration",
}

# Widget classes that can represent each kind of parameter (see the module docstring).
CONNECTOR_WIDGETS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}
# Widgets whose connector refuses an unbounded parameter.
NEEDS_BOUNDS = {"ctkSliderWidget", "QSlider"}

WIDGET_METHODS = (
    "setup",
    "cleanup",
    "enter",
    "exit",
    "onSceneStartClose",
    "onSceneEndClose",
    "initializeParameterNode",
    "setParameterNode",
    "_checkCanApply",
    "onApplyButton",
)
MODULE_PARENT_ATTRIBUTES = (
    "title",
    "categories",
    "dependencies",
    "contributors",
    "helpText",
    "acknowledgementText",
)
EXTENSION_VARIABLES = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)
# Keys allowed by slicer-extension-catalog-entry-schema-v1.0.1.json, and the required ones.
INDEX_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "build_subdirectory",
    "enabled",
    "tier",
}
INDEX_REQUIRED = {"$schema", "category", "scm_url"}


# --------------------------------------------------------------------------------------
# Python module files


def class_defs(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def dotted_name(node: ast.AST) -> str:
    """`a.b.c` for Name/Attribute chains, '' otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        prefix = dotted_name(node.value)
        return f"{prefix}.{node.attr}" if prefix else ""
    if isinstance(node, ast.Call):
        return dotted_name(node.func)
    return ""


def short_name(node: ast.AST) -> str:
    return dotted_name(node).rsplit(".", 1)[-1]


def methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}


@dataclass
class Field:
    name: str
    kind: str  # bool, int, float, str, path, node, or "unsupported: ..."
    node_classes: list[str] = field(default_factory=list)
    choices: list | None = None
    bounds: tuple | None = None  # (minimum, maximum); None where unbounded
    default: object = None
    has_default: bool = False
    union_without_none: bool = False


def _literal(node: ast.AST, constants: dict[str, object]):
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return ast.literal_eval(node)


def module_constants(tree: ast.Module) -> dict[str, object]:
    """Module-level NAME = <literal> assignments (e.g. a list of choices)."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    constants[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return constants


def _subscript_items(node: ast.Subscript) -> list[ast.AST]:
    return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]


def describe_annotation(name: str, annotation: ast.AST, constants: dict[str, object]) -> Field:
    """What a parameter-node annotation means for the GUI binding."""
    extras: list[ast.AST] = []
    base = annotation
    if isinstance(annotation, ast.Subscript) and short_name(annotation.value) == "Annotated":
        base, *extras = _subscript_items(annotation)
    result = Field(name=name, kind=f"unsupported: {ast.unparse(base)}")
    base_name = short_name(base)
    if isinstance(base, ast.Name | ast.Attribute):
        if base_name in ("bool", "int", "float", "str"):
            result.kind = base_name
        elif base_name.startswith("vtkMRML"):
            result.kind, result.node_classes = "node", [base_name]
        elif base_name in ("Path", "PurePath", "PosixPath", "WindowsPath"):
            result.kind = "path"
    elif isinstance(base, ast.Subscript) and short_name(base.value) in ("Union", "Optional"):
        members = [
            "None" if isinstance(m, ast.Constant) and m.value is None else short_name(m)
            for m in _subscript_items(base)
        ]
        nodes = [m for m in members if m != "None"]
        if nodes and all(m.startswith("vtkMRML") for m in nodes):
            result.kind, result.node_classes = "node", nodes
            # The wrapper's UnionSerializer can only store "no node" with None in the Union.
            result.union_without_none = short_name(base.value) == "Union" and "None" not in members
    minimum = maximum = None
    for extra in extras:
        extra_name = short_name(extra)
        if not isinstance(extra, ast.Call):
            continue
        args = [_literal(a, constants) for a in extra.args]
        if extra_name == "Choice":
            result.choices = list(args[0])
        elif extra_name == "WithinRange":
            minimum, maximum = args
        elif extra_name == "Minimum":
            minimum = args[0]
        elif extra_name == "Maximum":
            maximum = args[0]
    if minimum is not None and maximum is not None:
        result.bounds = (minimum, maximum)
    return result


def parameter_fields(cls: ast.ClassDef, constants: dict[str, object]) -> dict[str, Field]:
    fields = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            described = describe_annotation(node.target.id, node.annotation, constants)
            if node.value is not None:
                described.has_default = True
                described.default = _literal(node.value, constants)
            fields[node.target.id] = described
    return fields


def check_module_trio(module: str, tree: ast.Module) -> list[str]:
    """The classes of the scripted-module template, with the right bases and methods."""
    problems = []
    classes = class_defs(tree)
    expected_bases = {
        module: {"ScriptedLoadableModule"},
        f"{module}Widget": {"ScriptedLoadableModuleWidget", "VTKObservationMixin"},
        f"{module}Logic": {"ScriptedLoadableModuleLogic"},
        f"{module}Test": {"ScriptedLoadableModuleTest"},
    }
    for name, bases in expected_bases.items():
        if name not in classes:
            problems.append(f"class {name} is missing")
            continue
        found = {short_name(b) for b in classes[name].bases}
        if not bases <= found:
            problems.append(f"class {name} must derive from {sorted(bases)}, has {sorted(found)}")
    parameter_class = classes.get(f"{module}ParameterNode")
    if parameter_class is None:
        problems.append(f"class {module}ParameterNode is missing")
    elif "parameterNodeWrapper" not in {short_name(d) for d in parameter_class.decorator_list}:
        problems.append(f"class {module}ParameterNode is not decorated with @parameterNodeWrapper")
    if problems:
        return problems

    # ScriptedLoadableModule: the parent's descriptive attributes.
    init = methods(classes[module]).get("__init__")
    assigned = set()
    for node in ast.walk(init) if init else ():
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if dotted_name(target).startswith("self.parent."):
                    assigned.add(dotted_name(target).removeprefix("self.parent."))
    missing = [a for a in MODULE_PARENT_ATTRIBUTES if a not in assigned]
    if missing:
        problems.append(f"{module}.__init__ does not set parent.{', parent.'.join(missing)}")
    elif "PRIMAGE" not in _strings_in(init, "categories"):
        problems.append(f"{module} is not in the 'PRIMAGE' category")

    # Widget: the template's life-cycle methods, and the GUI bound through the parameter node.
    widget_methods = methods(classes[f"{module}Widget"])
    problems += [
        f"{module}Widget.{m}() is missing" for m in WIDGET_METHODS if m not in widget_methods
    ]
    calls = {
        m: {dotted_name(n) for n in ast.walk(widget_methods[m]) if isinstance(n, ast.Call)}
        for m in widget_methods
    }
    if not any(c.endswith(".connectGui") for c in calls.get("setParameterNode", ())):
        problems.append(f"{module}Widget.setParameterNode() does not call connectGui(self.ui)")
    if not any(c.endswith(".disconnectGui") for c in calls.get("exit", ())):
        problems.append(f"{module}Widget.exit() does not call disconnectGui()")
    if "slicer.util.tryWithErrorDisplay" not in calls.get("onApplyButton", ()):
        problems.append(f"{module}Widget.onApplyButton() does not use tryWithErrorDisplay")
    if f"UI/{module}.ui" not in _strings_in(widget_methods.get("setup")):
        problems.append(f"{module}Widget.setup() does not load UI/{module}.ui")

    # Logic: the typed parameter node.
    get_node = methods(classes[f"{module}Logic"]).get("getParameterNode")
    returns = [n.value for n in ast.walk(get_node) if isinstance(n, ast.Return)] if get_node else []
    if not any(
        isinstance(r, ast.Call) and short_name(r.func) == f"{module}ParameterNode" for r in returns
    ):
        problems.append(
            f"{module}Logic.getParameterNode() must return "
            f"{module}ParameterNode(super().getParameterNode())"
        )

    # Test: setUp and runTest, and runTest runs every test_* method.
    test_methods = methods(classes[f"{module}Test"])
    for name in ("setUp", "runTest"):
        if name not in test_methods:
            problems.append(f"{module}Test.{name}() is missing")
    run_calls = {
        short_name(n.func)
        for n in ast.walk(test_methods.get("runTest", ast.Module(body=[], type_ignores=[])))
        if isinstance(n, ast.Call)
    }
    tests = [m for m in test_methods if m.startswith("test_")]
    if not tests:
        problems.append(f"{module}Test has no test_* method")
    problems += [f"{module}Test.runTest() does not call {m}()" for m in tests if m not in run_calls]
    return problems


def _strings_in(node: ast.AST | None, target: str | None = None) -> set[str]:
    """String constants inside a node (only in assignments to `*.target` when given)."""
    if node is None:
        return set()
    roots = [node]
    if target is not None:
        roots = [
            n.value
            for n in ast.walk(node)
            if isinstance(n, ast.Assign) and any(dotted_name(t).endswith(target) for t in n.targets)
        ]
    return {
        n.value
        for root in roots
        for n in ast.walk(root)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def check_module_imports(tree: ast.Module) -> list[str]:
    """The module reaches the engine only through the MRML layer (and the error types)."""
    problems = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "primage":
                names = [f"primage.{alias.name}" for alias in node.names]
        for name in names:
            if name == "primage" or name.startswith("primage."):
                if not (name == "primage.errors" or name.startswith("primage.mrml")):
                    problems.append(
                        f"line {node.lineno}: imports {name}; modules use primage.mrml.* "
                        "and primage.errors only"
                    )
    return problems


# Application-only globals: the Logic and the parameter node must work without them.
GUI_GLOBALS = ("slicer.mrmlScene", "slicer.app", "slicer.modules")


def check_gui_globals(module: str, tree: ast.Module) -> list[str]:
    """slicer.mrmlScene / slicer.app / qt / ctk only inside the Module, Widget and Test classes."""
    allowed = {module, f"{module}Widget", f"{module}Test"}
    problems = set()
    for top in tree.body:
        if isinstance(top, ast.ClassDef) and top.name in allowed:
            continue
        for node in ast.walk(top):
            name = dotted_name(node) if isinstance(node, ast.Attribute) else ""
            if isinstance(node, ast.Name) and node.id in ("qt", "ctk"):
                name = node.id
            for banned in (*GUI_GLOBALS, "qt", "ctk"):
                if name == banned or name.startswith(banned + "."):
                    where = (
                        top.name
                        if isinstance(top, ast.ClassDef | ast.FunctionDef)
                        else "module level"
                    )
                    problems.add(f"line {node.lineno}: {banned} used in {where}")
                    break
    return sorted(problems)


def check_ui_references(tree: ast.Module, ui_names: set[str]) -> list[str]:
    """Every `self.ui.<name>` the module uses is a widget of its .ui file."""
    used = {
        (node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and dotted_name(node.value) == "self.ui"
    }
    return [
        f"line {line}: self.ui.{name} is not a widget of the .ui file"
        for name, line in sorted(used)
        if name not in ui_names
    ]


def check_parameter_defaults(fields: dict[str, Field]) -> list[str]:
    problems = []
    for f in fields.values():
        if f.kind.startswith("unsupported"):
            problems.append(f"field {f.name}: type cannot be bound to a widget ({f.kind})")
            continue
        if f.union_without_none:
            problems.append(
                f"field {f.name}: add None to the Union (else 'no node' cannot be stored)"
            )
        if f.kind != "node" and not f.has_default:
            problems.append(f"field {f.name}: give a default value")
        if not f.has_default:
            continue
        expected = {"bool": bool, "int": int, "float": (int, float), "str": str}.get(f.kind)
        if expected and (
            not isinstance(f.default, expected)
            or (f.kind != "bool" and isinstance(f.default, bool))
        ):
            problems.append(f"field {f.name}: default {f.default!r} is not a {f.kind}")
        if f.choices is not None and f.default not in f.choices:
            problems.append(f"field {f.name}: default {f.default!r} not in {f.choices}")
        if f.bounds is not None and not f.bounds[0] <= f.default <= f.bounds[1]:
            problems.append(f"field {f.name}: default {f.default!r} outside {f.bounds}")
    return problems


# --------------------------------------------------------------------------------------
# Qt Designer .ui files


@dataclass
class UiWidget:
    cls: str
    name: str
    properties: dict[str, object]
    items: list[str]


def _property_value(prop: ET.Element):
    value = next(iter(prop), None)
    if value is None:
        return None
    if value.tag == "string":
        return value.text or ""
    if value.tag == "stringlist":
        return [s.text or "" for s in value.findall("string")]
    if value.tag == "bool":
        return value.text == "true"
    if value.tag in ("number", "double"):
        return float(value.text)
    return value.text


def ui_widgets(root: ET.Element) -> list[UiWidget]:
    widgets = []
    for element in root.iter("widget"):
        properties = {p.get("name"): _property_value(p) for p in element.findall("property")}
        items = [
            _property_value(p)
            for item in element.findall("item")
            for p in item.findall("property")
            if p.get("name") == "text"
        ]
        widgets.append(UiWidget(element.get("class"), element.get("name"), properties, items))
    return widgets


def check_ui_structure(module: str, text: str) -> list[str]:
    """Well-formed Qt Designer XML with one qMRMLWidget, unique names, scene connections."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        return [f"not well-formed XML: {error}"]
    problems = []
    if root.tag != "ui" or root.get("version") != "4.0":
        problems.append('root element must be <ui version="4.0">')
    top = root.findall("widget")
    if len(top) != 1:
        return problems + [f"expected one top-level widget, found {len(top)}"]
    top = top[0]
    if top.get("class") != "qMRMLWidget":
        problems.append(f"top-level widget must be a qMRMLWidget, is {top.get('class')}")
    if top.get("name") != module or (root.findtext("class") or "") != module:
        problems.append(f"top-level widget and <class> must be named {module}")
    names = [e.get("name") for e in root.iter() if e.tag in ("widget", "layout", "spacer")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate object names: {duplicates}")
    if None in names or "" in names:
        problems.append("a widget, layout or spacer has no name")
    widgets = {w.name: w for w in ui_widgets(root)}
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    for w in widgets.values():
        if not w.cls.startswith("Q") and w.cls not in declared:
            problems.append(
                f"{w.name}: custom widget class {w.cls} not declared in <customwidgets>"
            )
    connections = {
        (c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
        for c in root.iter("connection")
    }
    for sender, _signal, receiver, _slot in connections:
        for end in (sender, receiver):
            if end not in widgets:
                problems.append(f"connection names a missing widget: {end}")
    for w in widgets.values():
        if w.cls.startswith("qMRML") and w.name != module:
            wanted = (
                module,
                "mrmlSceneChanged(vtkMRMLScene*)",
                w.name,
                "setMRMLScene(vtkMRMLScene*)",
            )
            if wanted not in connections:
                problems.append(f"{w.name}: no mrmlSceneChanged -> setMRMLScene connection")
    apply = widgets.get("applyButton")
    if apply is None or apply.cls != "QPushButton":
        problems.append("no QPushButton named applyButton")
    return problems


def check_ui_bindings(module: str, text: str, fields: dict[str, Field]) -> list[str]:
    """SlicerParameterName <-> parameter-node fields, with widgets that can represent them."""
    problems = []
    bound: dict[str, UiWidget] = {}
    for w in ui_widgets(ET.fromstring(text)):
        name = w.properties.get("SlicerParameterName")
        if name is None:
            continue
        if name in bound:
            problems.append(f"parameter {name} is bound to both {bound[name].name} and {w.name}")
        bound[name] = w
    for name, w in sorted(bound.items()):
        f = fields.get(name)
        if f is None:
            problems.append(
                f"{w.name}: SlicerParameterName {name!r} is not a field of {module}ParameterNode"
            )
            continue
        if w.cls not in CONNECTOR_WIDGETS.get(f.kind, ()):
            problems.append(f"{w.name}: a {w.cls} cannot represent {name} ({f.kind})")
            continue
        if w.cls == "QComboBox":
            if f.choices is None:
                problems.append(f"{w.name}: a QComboBox needs a Choice annotation on {name}")
            elif w.items != [str(c) for c in f.choices]:
                problems.append(f"{w.name}: items {w.items} differ from the choices {f.choices}")
        if w.cls in NEEDS_BOUNDS and f.bounds is None:
            problems.append(f"{w.name}: a {w.cls} needs a bounded range (WithinRange) on {name}")
        if f.kind == "node":
            node_types = w.properties.get("nodeTypes")
            if node_types is None or sorted(node_types) != sorted(f.node_classes):
                problems.append(f"{w.name}: nodeTypes {node_types} differ from {f.node_classes}")
    ignored = NON_GUI_FIELDS.get(module, set())
    for name in sorted(set(fields) - set(bound) - ignored):
        problems.append(f"field {name} has no widget with SlicerParameterName {name!r}")
    return problems


# --------------------------------------------------------------------------------------
# CMake


def _strip_cmake_comments(text: str) -> str:
    out, quoted = [], False
    for line in text.splitlines():
        kept = []
        for char in line:
            if char == '"':
                quoted = not quoted
            if char == "#" and not quoted:
                break
            kept.append(char)
        out.append("".join(kept))
    return "\n".join(out)


def cmake_commands(text: str) -> list[tuple[str, list[str]]]:
    """(lower-case command name, arguments) in file order; quotes removed from arguments."""
    text = _strip_cmake_comments(text)
    commands = []
    for match in re.finditer(r"(?m)^\s*([A-Za-z_]\w*)\s*\(", text):
        depth, index, quoted = 1, match.end(), False
        while depth and index < len(text):
            char = text[index]
            quoted = quoted != (char == '"')
            if not quoted:
                depth += {"(": 1, ")": -1}.get(char, 0)
            index += 1
        body = text[match.end() : index - 1]
        args = [a if a[:1] != '"' else a[1:-1] for a in re.findall(r'"[^"]*"|[^\s"]+', body)]
        commands.append((match.group(1).lower(), args))
    return commands


def _keyword_values(args: list[str], keyword: str, keywords: set[str]) -> list[str]:
    """Values after `keyword` up to the next keyword in a CMake macro call."""
    if keyword not in args:
        return []
    values = []
    for arg in args[args.index(keyword) + 1 :]:
        if arg in keywords:
            break
        values.append(arg)
    return values


def check_module_cmake(module_dir: Path) -> list[str]:
    module = module_dir.name
    path = module_dir / "CMakeLists.txt"
    if not path.is_file():
        return [f"{module}/CMakeLists.txt is missing"]
    commands = cmake_commands(path.read_text())
    variables: dict[str, list[str]] = {}
    for name, args in commands:
        if name == "set" and args:
            variables[args[0]] = args[1:]
    problems = []
    if variables.get("MODULE_NAME") != [module]:
        problems.append(f"set(MODULE_NAME {module}) is missing")

    def expand(value: str) -> str:
        return value.replace("${MODULE_NAME}", module)

    scripts = [expand(v) for v in variables.get("MODULE_PYTHON_SCRIPTS", [])]
    resources = [expand(v) for v in variables.get("MODULE_PYTHON_RESOURCES", [])]
    for listed in scripts + resources:
        if not (module_dir / listed).is_file():
            problems.append(f"listed file does not exist: {module}/{listed}")
    if f"{module}.py" not in scripts:
        problems.append(f"MODULE_PYTHON_SCRIPTS does not list {module}.py")
    python_files = {
        p.relative_to(module_dir).as_posix()
        for p in module_dir.rglob("*.py")
        if not p.relative_to(module_dir).parts[0] == "Testing"
    }
    problems += [
        f"{module}/{p} is not in MODULE_PYTHON_SCRIPTS" for p in sorted(python_files - set(scripts))
    ]
    resource_files = {
        p.relative_to(module_dir).as_posix()
        for p in (module_dir / "Resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    problems += [
        f"{module}/{p} is not in MODULE_PYTHON_RESOURCES"
        for p in sorted(resource_files - set(resources))
    ]
    for required in (f"Resources/Icons/{module}.png", f"Resources/UI/{module}.ui"):
        if required not in resources:
            problems.append(f"MODULE_PYTHON_RESOURCES does not list {required}")

    build = [args for name, args in commands if name == "slicermacrobuildscriptedmodule"]
    keywords = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR"}
    if len(build) != 1:
        problems.append("one slicerMacroBuildScriptedModule(...) call expected")
    else:
        args = build[0]
        if _keyword_values(args, "NAME", keywords) != ["${MODULE_NAME}"]:
            problems.append("slicerMacroBuildScriptedModule: NAME ${MODULE_NAME} expected")
        if _keyword_values(args, "SCRIPTS", keywords) != ["${MODULE_PYTHON_SCRIPTS}"]:
            problems.append(
                "slicerMacroBuildScriptedModule: SCRIPTS ${MODULE_PYTHON_SCRIPTS} expected"
            )
        if _keyword_values(args, "RESOURCES", keywords) != ["${MODULE_PYTHON_RESOURCES}"]:
            problems.append(
                "slicerMacroBuildScriptedModule: RESOURCES ${MODULE_PYTHON_RESOURCES} expected"
            )
        if "WITH_GENERIC_TESTS" not in args:
            problems.append("slicerMacroBuildScriptedModule: WITH_GENERIC_TESTS expected")

    # Inside if(BUILD_TESTING): the module's unittest and the Testing folder.
    names = [name for name, _ in commands]
    in_testing, seen = False, set()
    for name, args in commands:
        if name == "if" and args == ["BUILD_TESTING"]:
            in_testing = True
        elif name == "endif":
            in_testing = False
        elif (
            in_testing
            and name == "slicer_add_python_unittest"
            and args == ["SCRIPT", "${MODULE_NAME}.py"]
        ):
            seen.add("unittest")
        elif in_testing and name == "add_subdirectory" and args == ["Testing"]:
            seen.add("testing")
    if "unittest" not in seen:
        problems.append(
            "if(BUILD_TESTING): slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) missing"
        )
    if "testing" not in seen:
        problems.append("if(BUILD_TESTING): add_subdirectory(Testing) missing")
    for testing in ("Testing/CMakeLists.txt", "Testing/Python/CMakeLists.txt"):
        if not (module_dir / testing).is_file():
            problems.append(f"{module}/{testing} is missing")
    if "if" not in names:
        problems.append("no if(BUILD_TESTING) block")
    return problems


def check_extension_cmake(text: str, module_names: list[str]) -> list[str]:
    commands = cmake_commands(text)
    problems = []
    names = [name for name, _ in commands]
    project = [args for name, args in commands if name == "project"]
    if len(project) != 1 or not project[0]:
        return ["one project(<ExtensionName>) call expected"]
    extension = project[0][0]
    if extension.lower().startswith("slicer"):
        problems.append(f"extension name {extension} must not start with 'Slicer'")
    if not names or names[0] != "cmake_minimum_required":
        problems.append("cmake_minimum_required(...) must come first")
    variables = {args[0]: args[1:] for name, args in commands if name == "set" and args}
    for variable in EXTENSION_VARIABLES:
        if variable not in variables:
            problems.append(f"set({variable} ...) is missing")
    if variables.get("EXTENSION_CATEGORY") != ["Quantification"]:
        problems.append('EXTENSION_CATEGORY must be "Quantification"')
    for call in (
        ("find_package", ["Slicer", "REQUIRED"]),
        ("include", ["${Slicer_USE_FILE}"]),
        ("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]),
        ("include", ["${Slicer_EXTENSION_CPACK}"]),
    ):
        if call not in commands:
            problems.append(f"{call[0]}({' '.join(call[1])}) is missing")
    if ("find_package", ["Slicer", "REQUIRED"]) in commands and (
        "include",
        ["${Slicer_USE_FILE}"],
    ) in commands:
        if commands.index(("include", ["${Slicer_USE_FILE}"])) < commands.index(
            ("find_package", ["Slicer", "REQUIRED"])
        ):
            problems.append("include(${Slicer_USE_FILE}) must follow find_package(Slicer REQUIRED)")
    subdirectories = [args[0] for name, args in commands if name == "add_subdirectory" and args]
    for module in module_names:
        if subdirectories.count(module) != 1:
            problems.append(f"add_subdirectory({module}) expected once")
    for subdirectory in subdirectories:
        if not (REPO / subdirectory / "CMakeLists.txt").is_file():
            problems.append(f"add_subdirectory({subdirectory}): no {subdirectory}/CMakeLists.txt")
    if ("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]) in commands:
        config_at = commands.index(("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]))
        last_module = max(
            (i for i, (name, _args) in enumerate(commands) if name == "add_subdirectory"),
            default=-1,
        )
        if config_at < last_module:
            problems.append("include(${Slicer_EXTENSION_GENERATE_CONFIG}) must follow the modules")
    return problems


def check_engine_install(text: str) -> list[str]:
    """The engine package and the headless script are installed with the extension."""
    commands = cmake_commands(text)
    problems = []
    compiles = [args for name, args in commands if name == "ctkmacrocompilepythonscript"]
    keywords = {
        "TARGET_NAME",
        "SCRIPTS",
        "RESOURCES",
        "SOURCE_DIR",
        "DESTINATION_DIR",
        "INSTALL_DIR",
    }
    keywords |= {"NO_INSTALL_SUBDIR", "GLOBAL_TARGET"}
    engine = [
        a for a in compiles if _keyword_values(a, "TARGET_NAME", keywords) == ["PrimageEngine"]
    ]
    if len(engine) != 1:
        return ["ctkMacroCompilePythonScript(TARGET_NAME PrimageEngine ...) expected once"]
    engine = engine[0]
    if _keyword_values(engine, "DESTINATION_DIR", keywords) != [
        "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    ]:
        problems.append("PrimageEngine: DESTINATION_DIR must be the scripted-modules folder")
    if _keyword_values(engine, "INSTALL_DIR", keywords) != [
        "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    ]:
        problems.append("PrimageEngine: INSTALL_DIR must be the scripted-modules folder")
    if "NO_INSTALL_SUBDIR" not in engine:
        problems.append(
            "PrimageEngine: NO_INSTALL_SUBDIR needed (else a nested folder is installed)"
        )

    # The globs feeding SCRIPTS and RESOURCES must cover every file of the package.
    globs: dict[str, list[str]] = {}
    for name, args in commands:
        if name == "file" and args[:1] == ["GLOB_RECURSE"] and "RELATIVE" in args:
            patterns = args[args.index("RELATIVE") + 2 :]
            globs[args[1]] = [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for p in patterns]
    patterns = []
    for key in ("SCRIPTS", "RESOURCES"):
        for value in _keyword_values(engine, key, keywords):
            patterns += globs.get(value.strip("${}"), [])
    package_files = [
        p.relative_to(REPO)
        for p in (REPO / "primage").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    for path in package_files:
        if not any(_glob_recurse_matches(pattern, path) for pattern in patterns):
            problems.append(f"{path.as_posix()} is not installed by the PrimageEngine globs")

    script = [a for a in compiles if "primage_slicer.py" in a]
    if len(script) != 1:
        problems.append("scripts/primage_slicer.py is not installed (ctkMacroCompilePythonScript)")
    elif _keyword_values(script[0], "SOURCE_DIR", keywords) != [
        "${CMAKE_CURRENT_SOURCE_DIR}/scripts"
    ]:
        problems.append("primage_slicer.py: SOURCE_DIR must be ${CMAKE_CURRENT_SOURCE_DIR}/scripts")
    elif not SCRIPT.is_file():
        problems.append("scripts/primage_slicer.py is missing")
    return problems


def _glob_recurse_matches(pattern: str, path: Path) -> bool:
    """CMake GLOB_RECURSE semantics: `dir/*.ext` matches files at any depth under dir."""
    folder, _, name_pattern = pattern.rpartition("/")
    parts = path.as_posix()
    if folder and not parts.startswith(folder + "/"):
        return False
    return Path(path.name).match(name_pattern)


# --------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", params=MODULE_NAMES)
def module(request):
    return request.param


def _tree(module: str) -> ast.Module:
    return ast.parse((REPO / module / f"{module}.py").read_text(), filename=f"{module}.py")


def _fields(module: str) -> dict[str, Field]:
    tree = _tree(module)
    return parameter_fields(class_defs(tree)[f"{module}ParameterNode"], module_constants(tree))


def _ui_text(module: str) -> str:
    return (REPO / module / "Resources" / "UI" / f"{module}.ui").read_text()


# --------------------------------------------------------------------------------------
# Tests on the project


def test_modules_exist():
    assert "PrimagePreprocessing" in MODULE_NAMES
    for module_dir in MODULE_DIRS:
        assert (module_dir / f"{module_dir.name}.py").is_file(), (
            f"{module_dir.name}/{module_dir.name}.py"
        )


def test_module_trio(module):
    assert check_module_trio(module, _tree(module)) == []


def test_module_imports_engine_through_mrml_layer(module):
    assert check_module_imports(_tree(module)) == []


def test_module_uses_gui_globals_only_in_gui_classes(module):
    assert check_gui_globals(module, _tree(module)) == []


def test_parameter_node_fields(module):
    fields = _fields(module)
    assert fields, f"{module}ParameterNode has no fields"
    assert check_parameter_defaults(fields) == []


def test_ui_structure(module):
    assert check_ui_structure(module, _ui_text(module)) == []


def test_ui_bindings(module):
    assert check_ui_bindings(module, _ui_text(module), _fields(module)) == []


def test_ui_widgets_used_by_module_exist(module):
    names = {w.name for w in ui_widgets(ET.fromstring(_ui_text(module)))}
    assert check_ui_references(_tree(module), names) == []


def test_presets_exist(module):
    fields = _fields(module)
    choices = set(fields["preset"].choices) - {"custom"} if "preset" in fields else set()
    folder = PRESET_DIRS.get(module)
    if folder is None:
        # A module without a registered preset folder must not offer preset choices.
        assert not choices, f"{module} offers presets but PRESET_DIRS names no folder for them"
        return
    files = {p.stem for p in folder.glob("*.json")} | {p.stem for p in folder.glob("*.yaml")}
    assert choices == files, f"preset choices of {module} differ from {folder.relative_to(REPO)}"


def test_module_cmake(module):
    assert check_module_cmake(REPO / module) == []


def test_extension_cmake():
    assert check_extension_cmake((REPO / "CMakeLists.txt").read_text(), MODULE_NAMES) == []


def test_engine_and_script_installed():
    assert check_engine_install((REPO / "CMakeLists.txt").read_text()) == []


def _extension_name() -> str:
    commands = cmake_commands((REPO / "CMakeLists.txt").read_text())
    return next(args[0] for name, args in commands if name == "project")


def test_extensions_index_entry():
    name = _extension_name()
    path = REPO / "ExtensionsIndex" / f"{name}.json"
    assert path.is_file(), f"ExtensionsIndex/{name}.json (named after project()) is missing"
    entry = json.loads(path.read_text())
    assert INDEX_REQUIRED <= set(entry), f"missing keys {INDEX_REQUIRED - set(entry)}"
    assert set(entry) <= INDEX_KEYS, f"keys not in the catalog schema: {set(entry) - INDEX_KEYS}"
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["category"] == "Quantification"
    assert entry.get("build_subdirectory", ".") == "."
    assert re.fullmatch(r"https://github\.com/[\w.-]+/Slicer[\w.-]+", entry["scm_url"]), (
        "scm_url must be a GitHub repository whose name starts with 'Slicer'"
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_license_and_icons():
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert _png_size(REPO / f"{_extension_name()}.png") == (128, 128)
    variables = {
        args[0]: args[1:]
        for name, args in cmake_commands((REPO / "CMakeLists.txt").read_text())
        if name == "set" and args
    }
    assert variables["EXTENSION_ICONURL"][0].endswith(f"/{_extension_name()}.png")
    for module in MODULE_NAMES:
        width, height = _png_size(REPO / module / "Resources" / "Icons" / f"{module}.png")
        assert width == height and width >= 64


# --------------------------------------------------------------------------------------
# The Preprocessing module's step builder, run against the engine


def _steps_from_parameter_node():
    """PrimagePreprocessingLogic.stepsFromParameterNode, compiled alone from the module file.

    It is a pure function of the parameter values (no Slicer API), so it runs here with the
    module's own constants; the module's Slicer classes are not needed.
    """
    tree = _tree("PrimagePreprocessing")
    function = methods(class_defs(tree)["PrimagePreprocessingLogic"])["stepsFromParameterNode"]
    function.decorator_list = []
    namespace = dict(module_constants(tree))
    code = compile(ast.Module(body=[function], type_ignores=[]), "PrimagePreprocessing.py", "exec")
    exec(code, namespace)
    return namespace["stepsFromParameterNode"], namespace


def _without_notes(steps):
    return [{k: v for k, v in step.items() if k != "note"} for step in steps]


def test_custom_steps_are_valid_engine_steps():
    from primage.cli.preprocess import DENOISE_STEPS as CLI_DENOISE_STEPS
    from primage.preprocessing import STEPS, validate_steps

    steps_from, constants = _steps_from_parameter_node()
    fields = _fields("PrimagePreprocessing")
    assert constants["DENOISE_STEPS"] == CLI_DENOISE_STEPS, "module and CLI name methods alike"
    assert set(constants["DENOISE_STEPS"]) == set(fields["denoiseMethod"].choices) - {"none"}
    assert set(constants["NORMALISE_STEPS"]) == set(fields["normalise"].choices) - {"none"}
    defaults = {name: f.default for name, f in fields.items() if f.has_default}
    for denoise in fields["denoiseMethod"].choices:
        for normalise in fields["normalise"].choices:
            for n4 in (False, True):
                for resample in (False, True):
                    values = {**defaults, "denoiseMethod": denoise, "normalise": normalise}
                    values.update(n4=n4, resample=resample)
                    steps = steps_from(SimpleNamespace(**values))
                    validate_steps(steps)  # raises PrimageInputError on a bad name or value
                    expected = [
                        kind
                        for kind, wanted in (
                            ("bias", n4),
                            ("denoise", denoise != "none"),
                            ("resample", resample),
                            ("normalise", normalise != "none"),
                        )
                        if wanted
                    ]
                    assert [STEPS[step["step"]].kind for step in steps] == expected, values


def test_custom_defaults_reproduce_the_t2w_preset():
    """The custom settings start from PRIMAGE's T2w choices (N4 50 mm, diffusion 1 / 2)."""
    from primage.preprocessing import load_preset, validate_steps

    steps_from, _constants = _steps_from_parameter_node()
    defaults = {
        name: f.default for name, f in _fields("PrimagePreprocessing").items() if f.has_default
    }
    custom = validate_steps(steps_from(SimpleNamespace(**defaults)))
    preset = validate_steps(load_preset("t2w")["steps"])
    assert _without_notes(custom) == _without_notes(preset)


# --------------------------------------------------------------------------------------
# The headless script, with plain Python (`import slicer` gives slicer-core, no `app`)


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_script_help():
    result = _run_script("--", "--help")
    assert result.returncode == 0, result.stderr
    assert "preprocess" in result.stdout


def test_script_bad_input_exits_2(tmp_path):
    output = tmp_path / "out.nii.gz"
    result = _run_script(
        "--", "preprocess", "--input", str(tmp_path / "missing.nii.gz"), "--output", str(output)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("primage: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_script_usage_error_exits_2():
    result = _run_script("--", "no-such-area")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------
# The checkers catch broken input (so the tests above can fail)

BROKEN_MODULE = """
from typing import Annotated
from slicer.parameterNodeWrapper import parameterNodeWrapper, Choice, WithinRange
import primage.preprocessing
from slicer import vtkMRMLScalarVolumeNode

class Broken(ScriptedLoadableModule):
    def __init__(self, parent):
        self.parent.title = "Broken"

class BrokenParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(["a", "b"])] = "c"
    strength: Annotated[float, WithinRange(0, 1)] = 2.0
    count: int
    maskNode: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]

class BrokenWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        self.ui.missingButton.enabled = True

class BrokenLogic(ScriptedLoadableModuleLogic):
    def process(self):
        return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")

class BrokenTest(ScriptedLoadableModuleTest):
    def runTest(self):
        self.test_one()
    def test_one(self): pass
    def test_two(self): pass
"""

BROKEN_UI = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0"><class>Broken</class>
 <widget class="qMRMLWidget" name="Broken"><layout class="QVBoxLayout" name="layout">
  <item><widget class="qMRMLNodeComboBox" name="inputSelector">
   <property name="nodeTypes"><stringlist><string>vtkMRMLModelNode</string></stringlist></property>
   <property name="SlicerParameterName" stdset="0"><string>inputVolume</string></property></widget></item>
  <item><widget class="QComboBox" name="methodComboBox">
   <property name="SlicerParameterName" stdset="0"><string>method</string></property>
   <item><property name="text"><string>a</string></property></item></widget></item>
  <item><widget class="QSpinBox" name="strengthSpinBox">
   <property name="SlicerParameterName" stdset="0"><string>strength</string></property></widget></item>
  <item><widget class="QLineEdit" name="methodComboBox">
   <property name="SlicerParameterName" stdset="0"><string>unknownField</string></property></widget></item>
 </layout></widget>
</ui>
"""


def test_checkers_catch_broken_module():
    tree = ast.parse(BROKEN_MODULE)
    trio = check_module_trio("Broken", tree)
    assert any("parameterNodeWrapper" in p for p in trio)
    assert any("VTKObservationMixin" in p for p in trio)
    assert check_module_imports(tree) and "primage.preprocessing" in check_module_imports(tree)[0]
    assert any(
        "slicer.mrmlScene used in BrokenLogic" in p for p in check_gui_globals("Broken", tree)
    )
    assert check_ui_references(tree, {"applyButton"}) == [
        "line 20: self.ui.missingButton is not a widget of the .ui file"
    ]
    fields = parameter_fields(class_defs(tree)["BrokenParameterNode"], module_constants(tree))
    defaults = check_parameter_defaults(fields)
    assert any("'c' not in" in p for p in defaults)
    assert any("outside (0, 1)" in p for p in defaults)
    assert any("count: give a default" in p for p in defaults)
    assert any("maskNode: add None to the Union" in p for p in defaults)
    # A complete trio with a test method that runTest forgets.
    complete = BROKEN_MODULE.replace(
        "class BrokenParameterNode", "@parameterNodeWrapper\nclass BrokenParameterNode"
    )
    complete = complete.replace(
        "(ScriptedLoadableModuleWidget)", "(ScriptedLoadableModuleWidget, VTKObservationMixin)"
    )
    problems = check_module_trio("Broken", ast.parse(complete))
    assert "BrokenTest.runTest() does not call test_two()" in problems
    assert (
        "Broken.__init__ does not set parent.categories, parent.dependencies, parent.contributors, parent.helpText, parent.acknowledgementText"
        in problems
    )
    assert "BrokenWidget.onApplyButton() is missing" in problems


def test_checkers_catch_broken_ui():
    tree = ast.parse(BROKEN_MODULE)
    fields = parameter_fields(class_defs(tree)["BrokenParameterNode"], module_constants(tree))
    structure = check_ui_structure("Broken", BROKEN_UI)
    assert any("duplicate object names: ['methodComboBox']" in p for p in structure)
    assert any("inputSelector: no mrmlSceneChanged" in p for p in structure)
    assert any("applyButton" in p for p in structure)
    assert check_ui_structure("Broken", "<ui version='4.0'><widget") != []
    bindings = check_ui_bindings("Broken", BROKEN_UI, fields)
    assert any("nodeTypes ['vtkMRMLModelNode'] differ" in p for p in bindings)
    assert any("items ['a'] differ from the choices ['a', 'b']" in p for p in bindings)
    assert any("a QSpinBox cannot represent strength (float)" in p for p in bindings)
    assert any("'unknownField' is not a field" in p for p in bindings)
    assert any("field count has no widget" in p for p in bindings)


def test_checkers_catch_broken_cmake(tmp_path):
    module_dir = tmp_path / "PrimageBroken"
    (module_dir / "Resources" / "Icons").mkdir(parents=True)
    (module_dir / "Resources" / "Icons" / "PrimageBroken.png").write_bytes(b"")
    (module_dir / "Resources" / "Icons" / "unlisted.png").write_bytes(b"")
    (module_dir / "PrimageBroken.py").write_text("")
    (module_dir / "CMakeLists.txt").write_text(
        "set(MODULE_NAME PrimageBroken)\n"
        "set(MODULE_PYTHON_SCRIPTS ${MODULE_NAME}.py Helper.py)\n"
        "set(MODULE_PYTHON_RESOURCES Resources/Icons/${MODULE_NAME}.png)\n"
        "slicerMacroBuildScriptedModule(NAME ${MODULE_NAME} SCRIPTS ${MODULE_PYTHON_SCRIPTS}\n"
        "  RESOURCES ${MODULE_PYTHON_RESOURCES})\n"
        "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)  # outside if(BUILD_TESTING)\n"
    )
    problems = check_module_cmake(module_dir)
    assert "listed file does not exist: PrimageBroken/Helper.py" in problems
    assert (
        "PrimageBroken/Resources/Icons/unlisted.png is not in MODULE_PYTHON_RESOURCES" in problems
    )
    assert "MODULE_PYTHON_RESOURCES does not list Resources/UI/PrimageBroken.ui" in problems
    assert "slicerMacroBuildScriptedModule: WITH_GENERIC_TESTS expected" in problems
    assert any("slicer_add_python_unittest" in p for p in problems)

    extension = (REPO / "CMakeLists.txt").read_text()
    broken = extension.replace("project(PRIMAGE)", "project(SlicerPRIMAGE)")
    broken = broken.replace("add_subdirectory(PrimagePreprocessing)", "")
    broken = re.sub(r"set\(EXTENSION_ICONURL[^\n]*\n", "", broken)
    problems = check_extension_cmake(broken, MODULE_NAMES)
    assert "extension name SlicerPRIMAGE must not start with 'Slicer'" in problems
    assert "add_subdirectory(PrimagePreprocessing) expected once" in problems
    assert "set(EXTENSION_ICONURL ...) is missing" in problems
    assert check_engine_install(extension.replace("NO_INSTALL_SUBDIR", "")) != []
    assert check_engine_install(extension.replace("primage/*.py", "primage/cli/*.py")) != []
