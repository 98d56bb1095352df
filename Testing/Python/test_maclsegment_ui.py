"""The thin Qt layer, checked without Qt: every control the Widget uses exists in the .ui file with a
fitting class, the .ui binds only known parameters with widgets the parameter-node wrapper can connect,
and the wrapper's fields equal the Qt-free parameter list the Logic and tests use."""

import ast
import pathlib
import re
import xml.etree.ElementTree as ET

import pytest

from MACLSegmentLib import parameters

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = ROOT / "MACLSegment" / "MACLSegment.py"
UI = ROOT / "MACLSegment" / "Resources" / "UI" / "MACLSegment.ui"
LIB = ROOT / "MACLSegment" / "MACLSegmentLib"
GUI = ROOT / "MACLSegment" / "MACLSegmentGui"  # the Widget's handlers, by panel section
WIDGET_FILES = [MODULE] + sorted(GUI.glob("*.py"))

# Name suffix -> classes such a control may have.
SUFFIX_CLASSES = {
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "CheckBox": {"QCheckBox"},
    "Button": {"QPushButton", "QToolButton"},
    "CheckableComboBox": {"qMRMLCheckableNodeComboBox"},
    "ComboBox": {"QComboBox", "qMRMLCheckableNodeComboBox", "qMRMLNodeComboBox"},
    "Selector": {"qMRMLNodeComboBox"},
    "Label": {"QLabel"},
    "PathLineEdit": {"ctkPathLineEdit"},
    "SpinBox": {"QSpinBox", "QDoubleSpinBox"},
    "TextEdit": {"QTextEdit", "QPlainTextEdit"},
    "ProgressBar": {"QProgressBar"},
    "ListWidget": {"QListWidget"},
}
# Parameter kind -> widget classes Slicer's parameterNodeWrapper connects it to (guiConnectors.py).
KIND_CLASSES = {"int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
                "str": {"QLineEdit", "QTextEdit", "QComboBox"}, "bool": {"QCheckBox", "QPushButton"},
                "path": {"ctkPathLineEdit", "ctkDirectoryButton"}, "node": {"qMRMLNodeComboBox"}}
MRML_CLASSES = {"qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox"}
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QTextEdit", "QPlainTextEdit",
              "QProgressBar", "QLineEdit", "QCheckBox", "QListWidget"}


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI).getroot()


def widgets(root):
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_names_are_unique(ui):
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names))


def test_every_control_the_widget_uses_exists_with_a_fitting_class(ui):
    found = widgets(ui)
    for path in WIDGET_FILES:
        used = set(re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8")))
        assert used or path.name == "__init__.py", f"{path.name} references no controls?"
        for name in sorted(used):
            assert name in found, f"{path.name} uses self.ui.{name}, which the .ui file lacks"
            suffix = next(s for s in SUFFIX_CLASSES if name.endswith(s))
            assert found[name] in SUFFIX_CLASSES[suffix], f"{name} is a {found[name]}"


def test_the_widget_defines_every_handler_it_connects():
    """The handlers moved to MACLSegmentGui.sections: each one the Widget connects or calls is defined once."""
    defined = []
    for path in WIDGET_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            if path != MODULE or cls.name == "MACLSegmentWidget":
                defined += [f.name for f in cls.body if isinstance(f, ast.FunctionDef)]
    assert len(defined) == len(set(defined)), sorted(n for n in defined if defined.count(n) > 1)
    for path in WIDGET_FILES:
        called = set(re.findall(r"self\.((?:on|update|_)[A-Za-z]\w*)\(?", path.read_text(encoding="utf-8")))
        attributes = {"_parameterNode", "_parameterNodeGuiTag", "_monitor", "_dependencies", "_suggestions",
                      "_history", "_syncs", "_modelWatcher", "_gpus", "_gpuProbe", "_timer"}
        missing = sorted(called - set(defined) - attributes)
        assert not missing, f"{path.name} uses self.{missing[0]}, which no Widget section defines"


def test_every_class_in_the_ui_is_known(ui):
    custom = {c.findtext("class") for c in ui.iter("customwidget")}
    for name, cls in widgets(ui).items():
        assert cls in QT_CLASSES or cls in custom, f"{name}: {cls} is neither Qt nor a declared custom widget"


def test_mrml_widgets_receive_the_scene(ui):
    receivers = {c.findtext("receiver") for c in ui.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    for name, cls in widgets(ui).items():
        if cls in MRML_CLASSES:
            assert name in receivers, f"{name} is not connected to the scene"


def bound_parameters(ui, property="SlicerParameterName"):
    bound = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == property:
                bound[prop.findtext("string")] = widget.get("class")
    return bound


def test_ui_binds_every_parameter_to_a_connectable_widget(ui):
    bound = bound_parameters(ui)
    synced = bound_parameters(ui, "MACLSegmentSyncedParameter")  # kept in step by MACLSegmentLib.controller
    assert not set(bound) & set(synced)
    assert set(bound) | set(synced) == set(parameters.FIELDS_BY_NAME)
    for name, cls in bound.items():
        kind = parameters.FIELDS_BY_NAME[name].kind
        assert cls in KIND_CLASSES[kind], f"{name} ({kind}) is bound to a {cls}"
    # The wrapper's loops (QTextEdit rewritten per keystroke, ctkPathLineEdit never emptied) are avoided.
    assert not [name for name, cls in bound.items() if cls in ("QTextEdit", "ctkPathLineEdit")]
    for name, cls in synced.items():
        assert cls == ("QTextEdit" if parameters.FIELDS_BY_NAME[name].kind == "str" else "ctkPathLineEdit"), name


def wrapper_fields():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MACLSegmentParameterNode")
    fields = {}
    for statement in cls.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = ast.unparse(statement.annotation)
            default = ast.literal_eval(statement.value) if statement.value is not None else None
            fields[statement.target.id] = (annotation, default)
    return fields


def test_parameter_node_wrapper_matches_the_qt_free_parameter_list():
    kinds = {"int": "int", "str": "str", "float": "float", "bool": "bool", "path": "pathlib.Path"}
    fields = wrapper_fields()
    assert list(fields) == [f.name for f in parameters.FIELDS]
    for field in parameters.FIELDS:
        annotation, default = fields[field.name]
        expected = field.nodeClass if field.kind == "node" else kinds[field.kind]
        assert annotation == expected or annotation.startswith(f"Annotated[{expected},"), (field.name, annotation)
        if field.kind in ("int", "str", "float", "bool"):
            assert default == field.default, field.name
        else:
            assert default is None, f"{field.name}: the wrapper's default is its type's empty value"


def test_the_cine_frames_choices_are_the_libs():
    from MACLSegmentLib import sequences

    annotation, default = wrapper_fields()["segmentFrames"]
    choices = ast.literal_eval(annotation[annotation.index("Choice(") + 7:annotation.rindex(")]")])
    assert tuple(choices) == sequences.FRAME_CHOICES and default == sequences.SHOWN_FRAME


def test_module_file_compiles():
    compile(MODULE.read_text(encoding="utf-8"), str(MODULE), "exec")


def test_module_is_python_3_9_syntax():
    # Slicer 5.6 and 5.8 ship Python 3.9: no match statements, parenthesised context managers, etc.
    for path in sorted((ROOT / "MACLSegment").rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))


def test_lib_imports_no_qt_and_no_third_party_at_file_scope():
    allowed = {"slicer", "vtk", "__future__"}
    stdlib = set(getattr(__import__("sys"), "stdlib_module_names", ()))
    for path in LIB.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top not in ("qt", "ctk"), f"{path.name} imports {name}"
        for node in tree.body:  # file scope only
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            for top in tops:
                assert top in allowed or top in stdlib, f"{path.name} imports {top} at file scope"


def test_cmake_lists_every_script_and_resource():
    cmake = (ROOT / "MACLSegment" / "CMakeLists.txt").read_text(encoding="utf-8")
    for folder, package in ((LIB, "Lib"), (GUI, "Gui")):
        for path in sorted(folder.glob("*.py")):
            assert f"${{MODULE_NAME}}{package}/{path.name}" in cmake, \
                f"{package}/{path.name} is missing from MACLSegment/CMakeLists.txt"
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in cmake
    assert "slicer_add_python_unittest" in cmake and "WITH_GENERIC_TESTS" in cmake


def test_icons_are_128_pixel_pngs():
    for path in (ROOT / "MACLSegment.png", ROOT / "MACLSegment" / "Resources" / "Icons" / "MACLSegment.png"):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (128, 128), path


def test_volume_selectors_offer_no_label_maps(ui):
    for widget in ui.iter("widget"):
        types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        if "vtkMRMLScalarVolumeNode" in types:
            shown = [p.findtext("bool") for p in widget.findall("property") if p.get("name") == "showChildNodeTypes"]
            assert shown == ["false"], f"{widget.get('name')} offers label maps (child types of scalar volumes)"


def test_category_is_translated_in_slicers_context():
    assert 'categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]' in MODULE.read_text()


def test_extensions_index_entry_and_packaging():
    import json

    entry = json.loads((ROOT / "MACLSegment.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}  # the catalog schema v1.0.1 allows no other keys
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].rstrip("/").removesuffix(".git").split("/")[-1].startswith("Slicer")
    cmake = (ROOT / "MACLSegment" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'PATTERN "build" EXCLUDE' in cmake
    readme = re.search(r'^readme = "([^"]+)"', (ROOT / "MACLCore" / "pyproject.toml").read_text(), re.MULTILINE)
    assert (ROOT / "MACLCore" / readme.group(1)).is_file()
