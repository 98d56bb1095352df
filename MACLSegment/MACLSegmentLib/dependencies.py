"""Whether torch and MACLCore are importable, which GPUs are usable, and installing what is missing.

Nothing is installed at import time. Installing asks first (``confirm``) and takes the installers as
arguments, so it runs the same inside Slicer (PyTorchUtils for torch, ``slicer.util.pip_install`` for
MACLCore) and in tests (fakes that record calls).
"""

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import InputError

MINIMUM_TORCH = "2.1"
# The oldest MACLCore whose command line and modules this module uses; a bundled copy raises the bar to its own
# version, so that an extension update brings its MACLCore along (Upgrade).
MINIMUM_MACLCORE = "0.1.0"
# MACLCore is never fetched by name from a package index: the name is not published there, and asking an index
# for an unclaimed name would install whatever someone registers under it. Only the bundled copy is installed.
NOT_BUNDLED = ("MACLCore is not bundled with this copy of the module. Install the MACLSegment extension from the "
               "Extensions Manager (it ships MACLCore), or install a MACLCore checkout yourself: "
               "PythonSlicer -m pip install PATH/TO/MACLCore")
# Packages Slicer ships itself: MACLCore's requirements on them must not replace Slicer's copies.
SLICER_OWNED = ("torch", "simpleitk")


@dataclass
class DependencyStatus:
    """What is installed in this Python and what it can compute on."""

    torchVersion: Optional[str] = None
    maclcoreVersion: Optional[str] = None
    gpus: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    bundledMaclcoreVersion: Optional[str] = None

    @property
    def torchTooOld(self) -> bool:
        return bool(self.torchVersion) and not versionAtLeast(self.torchVersion, MINIMUM_TORCH)

    @property
    def maclcoreMinimum(self) -> str:
        bundled = self.bundledMaclcoreVersion
        return bundled if bundled and versionAtLeast(bundled, MINIMUM_MACLCORE) else MINIMUM_MACLCORE

    @property
    def maclcoreTooOld(self) -> bool:
        return bool(self.maclcoreVersion) and not versionAtLeast(self.maclcoreVersion, self.maclcoreMinimum)

    @property
    def missing(self) -> List[str]:
        """What Install/Upgrade would install: "PyTorch" and/or "MACLCore" (missing or too old)."""
        return [name for name, version, old in (("PyTorch", self.torchVersion, self.torchTooOld),
                                                ("MACLCore", self.maclcoreVersion, self.maclcoreTooOld))
                if not version or old]

    @property
    def upgrade(self) -> bool:
        """True when something is installed but too old (the button says Upgrade rather than Install)."""
        return self.torchTooOld or self.maclcoreTooOld

    @property
    def ready(self) -> bool:
        return bool(self.torchVersion and self.maclcoreVersion) and not self.problems and not self.missing

    def describe(self) -> str:
        torch = f"torch {self.torchVersion}" if self.torchVersion else "torch: not installed"
        if self.torchTooOld:
            torch += f" (older than the {MINIMUM_TORCH} needed: press Upgrade)"
        core = f"MACLCore {self.maclcoreVersion}" if self.maclcoreVersion else "MACLCore: not installed"
        if self.maclcoreTooOld:
            core += f" (older than the {self.maclcoreMinimum} this module needs: press Upgrade)"
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


def parseVersion(text: str) -> Tuple[int, ...]:
    """The leading release numbers of a version: ``2.4.1+cu121`` -> (2, 4, 1); () when there are none."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text or "")
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def versionAtLeast(version: str, minimum: str) -> bool:
    """Release-number comparison (pre-release tags ignored); an unreadable version does not pass."""
    have, need = parseVersion(version), parseVersion(minimum)
    if not have:
        return False
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def bundledMaclcoreVersion(folder: Optional[str] = None) -> Optional[str]:
    """The ``version`` in the bundled MACLCore's pyproject.toml (None without a bundle)."""
    folder = folder or bundledMaclcore()
    if not folder:
        return None
    try:
        with open(os.path.join(folder, "pyproject.toml"), encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else None


def checkDependencies(queryGpus: bool = True) -> DependencyStatus:
    """Versions of torch and MACLCore (None when missing), the bundled MACLCore's version and, with
    ``queryGpus``, the usable GPUs."""
    status = DependencyStatus(bundledMaclcoreVersion=bundledMaclcoreVersion())
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
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, "MACLCore"), os.path.join(os.path.dirname(here), "MACLCore")):
        if os.path.isfile(os.path.join(candidate, "pyproject.toml")):
            return candidate
    return None


def maclcoreRequirement() -> str:
    """What pip installs for MACLCore: the bundled source; InputError (saying what to do) without one."""
    bundled = bundledMaclcore()
    if not bundled:
        raise InputError(NOT_BUNDLED)
    return bundled


def _requirementName(requirement: str) -> str:
    name = requirement.split(";")[0].strip()
    for separator in "<>=!~[ (":
        name = name.split(separator)[0]
    return name.strip().lower().replace("_", "-")


def _installedRequirements(distribution: str) -> List[str]:
    importlib.invalidate_caches()
    return list(importlib.metadata.requires(distribution) or [])


def installMaclcore(pipInstall: Callable[[List[str]], None], requirement: Optional[str] = None,
                    requirementsOf: Optional[Callable[[str], List[str]]] = None) -> List[str]:
    """pip-install MACLCore without touching the packages Slicer owns (torch, SimpleITK).

    MACLCore goes in with ``--no-deps`` (``--upgrade``, so a newer bundled copy replaces an installed one);
    then each of its requirements except those Slicer owns. Every call passes a list: ``slicer.util.pip_install``
    ``shlex.split``s a string, which eats the backslashes of a Windows path. Returns the requirements installed.
    """
    requirementsOf = requirementsOf or _installedRequirements
    requirement = requirement or maclcoreRequirement()
    pipInstall([requirement, "--upgrade", "--no-deps"])
    installed = []
    for dependency in requirementsOf("MACLCore"):
        if "extra ==" in dependency or _requirementName(dependency) in SLICER_OWNED:
            continue
        spec = dependency.split(";")[0].replace(" ", "")
        pipInstall([spec])
        installed.append(spec)
    return installed


def restartNeeded(before: DependencyStatus, loaded: Optional[Sequence[str]] = None) -> List[str]:
    """Packages that were replaced while this Python had them imported: Slicer must restart to use them."""
    loaded = sys.modules if loaded is None else loaded
    after = checkDependencies(queryGpus=False)
    replaced = []
    for name, module, old, new in (("PyTorch", "torch", before.torchVersion, after.torchVersion),
                                   ("MACLCore", "maclcore", before.maclcoreVersion, after.maclcoreVersion)):
        if old and new and old != new and module in loaded:
            replaced.append(name)
    return replaced


def installDependencies(confirm: Callable[[str], bool], installTorch: Callable[[], None],
                        pipInstall: Callable[[List[str]], None], status: Optional[DependencyStatus] = None,
                        requirement: Optional[str] = None,
                        requirementsOf: Optional[Callable[[str], List[str]]] = None) -> bool:
    """Install what is missing or too old, after ``confirm(question)`` says yes. Returns False when the user
    declined.

    torch comes first (through ``installTorch``, e.g. :func:`pyTorchUtilsInstaller`), so that pip never
    pulls a torch build of its own choosing for MACLCore. Without a bundled MACLCore nothing is installed and
    InputError says what to do (before asking).
    """
    status = status or checkDependencies(queryGpus=False)
    missing = status.missing
    if not missing:
        return True
    if "MACLCore" in missing and not requirement:
        requirement = maclcoreRequirement()
    verb = "Upgrade" if status.upgrade else "Install"
    question = (f"MACLSegment needs {' and '.join(missing)} ({status.describe()}) in Slicer's Python. {verb} now? "
                "This downloads several hundred MB (PyTorch with CUDA: a few GB) and can take minutes.")
    if status.upgrade:
        question += " Slicer must be restarted afterwards if the old version was already in use."
    if not confirm(question):
        return False
    if "PyTorch" in missing:
        installTorch()
    if "MACLCore" in missing:
        installMaclcore(pipInstall, requirement, requirementsOf)
    importlib.invalidate_caches()
    return True
