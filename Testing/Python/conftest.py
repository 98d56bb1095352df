"""Fixtures of the extension's tests: the module's folder on sys.path and a headless Slicer scene."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import slicer_env  # noqa: E402

slicer_env.addModulePath()


@pytest.fixture
def slicerEnvironment():
    """A fresh MRML scene with the Colors, Volumes and Segmentations logics (skips without slicer-core)."""
    pytest.importorskip("slicer", reason="slicer-core (real Slicer MRML) is not installed")
    environment = slicer_env.SlicerEnvironment()
    yield environment
    environment.close()


@pytest.fixture
def selfTestContext(slicerEnvironment, tmp_path):
    """The context the module's self-test bodies take, on the headless scene; jobs run this Python."""
    pytest.importorskip("maclcore", reason="MACLCore is not installed")
    from MACLSegmentLib.testsupport import SelfTestContext

    return SelfTestContext(scene=slicerEnvironment.scene, applicationLogic=slicerEnvironment.applicationLogic,
                           folder=str(tmp_path), pythonExecutable=sys.executable)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU")
