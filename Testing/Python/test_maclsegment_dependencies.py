"""Setup: the dependency check and the install path, with fake installers (nothing is installed)."""

import os
import shlex
import sys
import types

import pytest

from MACLSegmentLib import dependencies
from MACLSegmentLib.errors import InputError

REQUIREMENTS = ["torch>=2.1", "numpy>=1.23", "SimpleITK>=2.2", "pynrrd>=1.0", "pytest>=7.4; extra == \"test\""]


class Recorder:
    def __init__(self, answer=True):
        self.answer, self.questions, self.calls = answer, [], []

    def confirm(self, question):
        self.questions.append(question)
        return self.answer

    def installTorch(self):
        self.calls.append("torch")

    def pip(self, requirement):
        self.calls.append(slicerPipArguments(requirement)[1:])


def slicerPipArguments(requirements):
    """What ``slicer.util.pip_install`` (Slicer 5.6-5.10, Base/Python/slicer/util.py) hands to pip: a string is
    ``shlex.split``, a list is taken as it is, anything else is refused."""
    if type(requirements) == str:  # noqa: E721 (Slicer tests the exact type)
        return ["install", *shlex.split(requirements)]
    if type(requirements) == list:  # noqa: E721
        return ["install", *requirements]
    raise ValueError("pip_install requirement input must be string or list")


def install(recorder, status):
    return dependencies.installDependencies(recorder.confirm, recorder.installTorch, recorder.pip, status=status,
                                            requirementsOf=lambda name: REQUIREMENTS)


def test_nothing_is_installed_without_confirmation():
    recorder = Recorder(answer=False)
    assert install(recorder, dependencies.DependencyStatus()) is False
    assert "PyTorch and MACLCore" in recorder.questions[0] and recorder.calls == []


def test_torch_first_then_maclcore_without_touching_slicers_packages():
    recorder = Recorder()
    assert install(recorder, dependencies.DependencyStatus()) is True
    assert recorder.calls == ["torch", [dependencies.maclcoreRequirement(), "--upgrade", "--no-deps"],
                              ["numpy>=1.23"], ["pynrrd>=1.0"]]


def test_only_what_is_missing_is_installed():
    recorder = Recorder()
    install(recorder, dependencies.DependencyStatus(torchVersion="2.4.0"))
    assert recorder.calls[0] == [dependencies.maclcoreRequirement(), "--upgrade", "--no-deps"]
    assert "torch" not in recorder.calls
    recorder = Recorder()
    assert install(recorder, dependencies.DependencyStatus(torchVersion="2.4", maclcoreVersion="0.1.0")) is True
    assert recorder.questions == [] and recorder.calls == []


def test_pytorchutils_installs_torch_with_a_minimum_version(monkeypatch):
    calls = []

    class Logic:
        def installTorch(self, **kwargs):
            calls.append(kwargs)
            return types.SimpleNamespace(__version__="2.4.0")

    monkeypatch.setitem(__import__("sys").modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    dependencies.pyTorchUtilsInstaller()()
    assert calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1"}]


def test_without_the_pytorch_extension_the_user_is_told_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "PyTorchUtils", None)  # import fails
    with pytest.raises(InputError, match="Extensions Manager"):
        dependencies.pyTorchUtilsInstaller()()


def test_check_sees_this_environment():
    pytest.importorskip("torch")
    pytest.importorskip("maclcore")
    status = dependencies.checkDependencies()
    assert status.ready and status.torchVersion and status.maclcoreVersion
    assert "GPUs:" in status.describeGpus()


def test_the_maclcore_source_shipped_with_the_module_is_what_gets_installed():
    # In this source checkout MACLCore lies one folder above the module: Setup installs that copy, so the
    # module needs no package index for MACLCore.
    bundled = dependencies.bundledMaclcore()
    assert bundled is not None and os.path.isfile(os.path.join(bundled, "pyproject.toml"))
    assert dependencies.maclcoreRequirement() == bundled


def test_a_windows_path_reaches_pip_whole():
    # Slicer's pip_install shlex.splits a string: "C:\\Slicer\\MACLCore --no-deps" would lose its backslashes.
    path = r"C:\Program Files\Slicer 5.8\lib\Slicer-5.8\qt-scripted-modules\MACLCore"
    recorder = Recorder()
    dependencies.installMaclcore(recorder.pip, requirement=path, requirementsOf=lambda name: [])
    assert recorder.calls == [[path, "--upgrade", "--no-deps"]]
    assert shlex.split(f"{path} --no-deps")[0] != path  # what the old string form handed to pip


def test_without_a_bundled_copy_no_package_index_is_asked_for_maclcore(monkeypatch):
    monkeypatch.setattr(dependencies, "bundledMaclcore", lambda: None)
    recorder = Recorder()
    with pytest.raises(InputError, match="Extensions Manager"):
        install(recorder, dependencies.DependencyStatus(torchVersion="2.4.0"))
    assert recorder.calls == [] and recorder.questions == []
    with pytest.raises(InputError):
        dependencies.maclcoreRequirement()


def test_versions_are_compared_and_old_ones_offered_an_upgrade():
    assert dependencies.versionAtLeast("2.4.1+cu121", "2.1") and dependencies.versionAtLeast("2.1", "2.1.0")
    assert not dependencies.versionAtLeast("2.0.1", "2.1") and not dependencies.versionAtLeast("unknown", "0.1")
    old_torch = dependencies.DependencyStatus(torchVersion="2.0.1", maclcoreVersion="0.1.0",
                                              bundledMaclcoreVersion="0.1.0")
    assert not old_torch.ready and old_torch.missing == ["PyTorch"] and old_torch.upgrade
    assert "older than the 2.1" in old_torch.describe()
    # An extension update ships MACLCore 0.2.0: the installed 0.1.0 no longer passes, Upgrade installs the bundle.
    old_core = dependencies.DependencyStatus(torchVersion="2.4.0", maclcoreVersion="0.1.0",
                                             bundledMaclcoreVersion="0.2.0")
    assert not old_core.ready and old_core.missing == ["MACLCore"] and "press Upgrade" in old_core.describe()
    recorder = Recorder()
    assert install(recorder, old_core) is True
    assert "Upgrade now?" in recorder.questions[0] and "restarted" in recorder.questions[0]
    assert recorder.calls[0] == [dependencies.maclcoreRequirement(), "--upgrade", "--no-deps"]
    current = dependencies.DependencyStatus(torchVersion="2.4.0", maclcoreVersion="0.2.0",
                                            bundledMaclcoreVersion="0.2.0")
    assert current.ready and not current.missing


def test_the_bundled_version_is_read_and_a_replaced_loaded_package_needs_a_restart():
    pytest.importorskip("maclcore")
    import maclcore

    assert dependencies.bundledMaclcoreVersion() == maclcore.__version__
    before = dependencies.DependencyStatus(torchVersion="2.0.0", maclcoreVersion="0.0.1")
    assert dependencies.restartNeeded(before, loaded={"maclcore"}) == ["MACLCore"]
    assert dependencies.restartNeeded(before, loaded=set()) == []


def test_the_check_when_the_module_opens_does_not_import_torch():
    import subprocess
    import sys

    lib = os.path.join(os.path.dirname(__file__), "..", "..", "MACLSegment")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from MACLSegmentLib import dependencies; "
            "status = dependencies.checkDependencies(queryGpus=False); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(status.describe())")
    done = subprocess.run([sys.executable, "-c", code, lib], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_gpus_are_found_by_a_background_process(tmp_path):
    pytest.importorskip("torch")
    from MACLSegmentLib.logic import CoreLogic

    logic = CoreLogic(scene=object(), pythonExecutable=sys.executable, temporaryFolder=str(tmp_path))
    gpus = logic.runToCompletion(logic.probeGpus(), timeout=120)
    assert gpus == dependencies.usableGpus()


def test_training_on_the_cpu_is_confirmed_first():
    from MACLSegmentLib.controller import cpuTrainingWarning

    assert "no usable GPU" in cpuTrainingWarning([], "auto")
    assert "set to cpu" in cpuTrainingWarning(["0: A100 (80 GiB)"], "cpu")
    assert cpuTrainingWarning(["0: A100 (80 GiB)"], "auto") is None
    assert cpuTrainingWarning(None, "auto") is None  # GPUs not known yet: do not guess
