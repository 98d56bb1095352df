"""Whether torch and MACLCore are importable, which GPUs are usable, and installing what is missing.

Nothing is installed at import time. Installing asks first (``confirm``) and takes the installers as
arguments, so it runs the same inside Slicer (PyTorchUtils for torch, ``slicer.util.pip_install`` for
MACLCore) and in tests (fakes that record calls).
"""

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from .errors import InputError

MINIMUM_TORCH = "2.1"
MACLCORE_REQUIREMENT = "MACLCore"  # the package index's name, used when no copy ships with the module
# Packages Slicer ships itself: MACLCore's requirements on them must not replace Slicer's copies.
SLICER_OWNED = ("torch", "simpleitk")


@dataclass
class DependencyStatus:
    """What is installed in this Python and what it can compute on."""

    torchVersion: Optional[str] = None
    maclcoreVersion: Optional[str] = None
    gpus: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return bool(self.torchVersion and self.maclcoreVersion) and not self.problems

    def describe(self) -> str:
        torch = f"torch {self.torchVersion}" if self.torchVersion else "torch: not installed"
        core = f"MACLCore {self.maclcoreVersion}" if self.maclcoreVersion else "MACLCore: not installed"
        return "; ".join([torch, core] + self.problems)

    def describeGpus(self) -> str:
        if not self.torchVersion:
            return "GPUs: unknown until torch is installed"
        if not self.gpus:
            return "GPUs: none usable, jobs run on the CPU (slow for training)"
        return "GPUs: " + "; ".join(self.gpus)


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def usableGpus() -> List[str]:
    """``index: name (memory)`` of each CUDA GPU torch can use (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return []
    names = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        names.append(f"{index}: {properties.name} ({properties.total_memory / 2 ** 30:.0f} GiB)")
    return names


def checkDependencies(queryGpus: bool = True) -> DependencyStatus:
    """Versions of torch and MACLCore (None when missing) and, with ``queryGpus``, the usable GPUs."""
    status = DependencyStatus()
    if importlib.util.find_spec("torch") is not None:
        status.torchVersion = _version("torch") or "unknown version"
    if importlib.util.find_spec("maclcore") is not None:
        status.maclcoreVersion = _version("MACLCore") or "unknown version"
    if status.torchVersion and queryGpus:
        try:
            status.gpus = usableGpus()
        except Exception as exc:  # a broken torch install: say so instead of failing the GUI
            status.problems.append(f"torch does not load ({str(exc).splitlines()[0][:120]})")
    return status


def pyTorchUtilsInstaller(minimumVersion: str = MINIMUM_TORCH) -> Callable[[], None]:
    """Install torch through Slicer's PyTorch extension, which picks the CUDA build matching the driver."""

    def install() -> None:
        try:
            import PyTorchUtils
        except ImportError:
            raise InputError("PyTorch is needed: install the 'PyTorch' extension from the Extensions Manager, "
                             "restart Slicer, then press Install again") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                               torchVersionRequirement=f">={minimumVersion}")
        if torch is None:
            raise InputError("PyTorch was not installed (see the Python console for details)")

    return install


def bundledMaclcore() -> Optional[str]:
    """MACLCore's source shipped with the module, if any: beside the installed module (the extension's CMake
    installs it there) or one folder up in a source checkout (Slicer's "Additional module paths")."""
    import os

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, "MACLCore"), os.path.join(os.path.dirname(here), "MACLCore")):
        if os.path.isfile(os.path.join(candidate, "pyproject.toml")):
            return candidate
    return None


def maclcoreRequirement() -> str:
    """What pip installs for MACLCore: the bundled source when there is one, else the index's package."""
    return bundledMaclcore() or MACLCORE_REQUIREMENT


def _requirementName(requirement: str) -> str:
    name = requirement.split(";")[0].strip()
    for separator in "<>=!~[ (":
        name = name.split(separator)[0]
    return name.strip().lower().replace("_", "-")


def _installedRequirements(distribution: str) -> List[str]:
    importlib.invalidate_caches()
    return list(importlib.metadata.requires(distribution) or [])


def installMaclcore(pipInstall: Callable[[str], None], requirement: Optional[str] = None,
                    requirementsOf: Optional[Callable[[str], List[str]]] = None) -> List[str]:
    """pip-install MACLCore without touching the packages Slicer owns (torch, SimpleITK).

    MACLCore goes in with ``--no-deps``; then each of its requirements except those Slicer owns.
    Returns the requirements installed.
    """
    requirementsOf = requirementsOf or _installedRequirements
    requirement = requirement or maclcoreRequirement()
    pipInstall(f'"{requirement}" --no-deps' if " " in requirement else f"{requirement} --no-deps")
    installed = []
    for dependency in requirementsOf("MACLCore"):
        if "extra ==" in dependency or _requirementName(dependency) in SLICER_OWNED:
            continue
        spec = dependency.split(";")[0].replace(" ", "")
        pipInstall(spec)
        installed.append(spec)
    return installed


def installDependencies(confirm: Callable[[str], bool], installTorch: Callable[[], None],
                        pipInstall: Callable[[str], None], status: Optional[DependencyStatus] = None,
                        requirement: Optional[str] = None,
                        requirementsOf: Optional[Callable[[str], List[str]]] = None) -> bool:
    """Install what is missing, after ``confirm(question)`` says yes. Returns False when the user declined.

    torch comes first (through ``installTorch``, e.g. :func:`pyTorchUtilsInstaller`), so that pip never
    pulls a torch build of its own choosing for MACLCore.
    """
    status = status or checkDependencies(queryGpus=False)
    missing = [name for name, version in (("PyTorch", status.torchVersion), ("MACLCore", status.maclcoreVersion))
               if not version]
    if not missing:
        return True
    question = (f"MACLSegment needs {' and '.join(missing)} in Slicer's Python. Install now? "
                "This downloads several hundred MB (PyTorch with CUDA: a few GB) and can take minutes.")
    if not confirm(question):
        return False
    if not status.torchVersion:
        installTorch()
    if not status.maclcoreVersion:
        installMaclcore(pipInstall, requirement, requirementsOf)
    importlib.invalidate_caches()
    return True
