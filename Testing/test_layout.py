"""Extension layout: CMake lists every module and every Python file it ships; the core never imports
slicer, qt, ctk or vtk; the Qt-free logic never imports Qt; every Slicer Python file compiles."""

import ast
import py_compile
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["SonoSAMSegment", "SonoSAMTrack"]
GUI_MODULES = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "qSlicerSegmentationsEditorEffectsPythonQt", "PythonQt"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_cmake_is_an_extension_listing_every_module():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "find_package(Slicer REQUIRED)" in text
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert f"set({key}" in text, key
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
        assert (ROOT / module / "CMakeLists.txt").is_file()
        assert (ROOT / module / f"{module}.py").is_file()
    assert "sonosam/*.py" in text  # the core is installed with the extension


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_its_scripts_and_resources(module):
    text = (ROOT / module / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(" in text
    listed = {item.replace("${MODULE_NAME}", module) for item in re.findall(r"^\s+(\S+\.(?:py|ui|png))\s*$", text, re.M)}
    for item in listed:
        assert (ROOT / module / item).is_file(), f"{module}/CMakeLists.txt lists missing {item}"
    shipped = {p.relative_to(ROOT / module).as_posix() for p in (ROOT / module).rglob("*.py")
               if "Testing" not in p.parts and "__pycache__" not in p.parts}
    missing = shipped - listed
    assert not missing, f"{module}/CMakeLists.txt does not list {sorted(missing)}"


def test_extension_resources():
    from PIL import Image

    with Image.open(ROOT / "Resources" / "SonoSAM.png") as icon:
        assert icon.size == (128, 128)
    s4ext = (ROOT / "Resources" / "SonoSAM.s4ext").read_text()
    for key in ("scm", "scmurl", "depends", "category", "iconurl", "description", "screenshoturls", "enabled"):
        assert re.search(rf"^{key} ", s4ext, re.M), key


def test_core_never_imports_slicer_qt_or_vtk():
    offenders = {}
    for path in (ROOT / "sonosam").rglob("*.py"):
        bad = _imports(path) & GUI_MODULES
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"the core must stay GUI-free: {offenders}"


def test_qt_free_logic_has_no_qt():
    for path in (ROOT / "SonoSAMSegment" / "SonoSAMSegmentLib").rglob("*.py"):
        assert not _imports(path) & {"qt", "ctk", "PythonQt"}, path


def test_slicer_python_files_compile():
    for module in MODULES:
        for path in (ROOT / module).rglob("*.py"):
            py_compile.compile(str(path), doraise=True)
