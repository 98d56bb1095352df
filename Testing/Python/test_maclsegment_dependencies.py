"""Setup: the dependency check and the install path, with fake installers (nothing is installed)."""

import os
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
        self.calls.append(requirement)


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
    assert recorder.calls == ["torch", f"{dependencies.maclcoreRequirement()} --no-deps", "numpy>=1.23", "pynrrd>=1.0"]


def test_only_what_is_missing_is_installed():
    recorder = Recorder()
    install(recorder, dependencies.DependencyStatus(torchVersion="2.4.0"))
    assert recorder.calls[0] == f"{dependencies.maclcoreRequirement()} --no-deps" and "torch" not in recorder.calls
    recorder = Recorder()
    assert install(recorder, dependencies.DependencyStatus(torchVersion="2.4", maclcoreVersion="0.1")) is True
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
