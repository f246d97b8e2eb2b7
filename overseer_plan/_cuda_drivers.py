"""Which NVIDIA driver a torch CUDA build needs: a small data table with its sources.

A torch wheel ships its own CUDA runtime, so the machine needs only a driver new enough
for that runtime. Since CUDA 11, "minor version compatibility" lets any runtime of a major
release run on that major's minimum driver (with a limited feature set, e.g. no PTX JIT
of newer PTX); the driver packaged with each toolkit release is newer still.

Why a Python table and not a YAML file under `rules/`: the rulebook loader accepts only files
holding a `rules:` list of known kinds, and a YAML file inside `overseer_plan/` would need a
packaging change. The table is data all the same: nothing below it branches on versions.

Sources (NVIDIA CUDA Toolkit release notes, https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/,
"CUDA Toolkit and Corresponding Driver Versions" and "CUDA Toolkit and Minimum Required Driver
Version for CUDA Minor Version Compatibility"; also
https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
"""

from __future__ import annotations

from dataclasses import dataclass

# CUDA major -> minimum driver under minor version compatibility, (Linux x86_64, Windows).
# None: NVIDIA's table gives no number for that platform.
MINOR_COMPAT_MINIMUM: dict[int, tuple[str, str | None]] = {
    11: ("450.80.02", "452.39"),
    12: ("525.60.13", "527.41"),
    13: ("580.65.06", None),
}

# CUDA toolkit (GA release) -> the Linux driver it ships with ("Toolkit Driver Version").
TOOLKIT_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

# torch wheel index per CUDA version, newest first; `pip install torch --index-url <base>/cuXYZ`.
TORCH_INDEX = "https://download.pytorch.org/whl"
TORCH_CUDA_WHEELS = ("13.0", "12.9", "12.8", "12.6", "12.4", "12.1", "11.8")


@dataclass(frozen=True)
class DriverNeed:
    """What a CUDA runtime needs from the driver."""

    cuda: str
    minimum: str | None
    """Oldest driver that runs it (minor version compatibility); None when unknown."""
    toolkit: str | None
    """Driver shipped with that toolkit (full feature set, Linux); None when not in the table."""


def version_tuple(text: str) -> tuple[int, ...]:
    """'550.54.15' -> (550, 54, 15). Raises ValueError for something that is not a version."""
    return tuple(int(part) for part in text.strip().split("."))


def driver_need(cuda: str, *, windows: bool = False) -> DriverNeed:
    """The driver the CUDA runtime `cuda` (e.g. '12.4') needs, on Linux or Windows/WSL."""
    major = version_tuple(cuda)[0]
    linux, win = MINOR_COMPAT_MINIMUM.get(major, (None, None))
    minimum = win if windows else linux
    short = ".".join(cuda.split(".")[:2])
    return DriverNeed(cuda=cuda, minimum=minimum, toolkit=TOOLKIT_DRIVER.get(short))


def driver_too_old(driver: str, need: DriverNeed) -> bool:
    """True when `driver` is older than the minimum `need` names (False when either is unknown)."""
    if need.minimum is None:
        return False
    return version_tuple(driver) < version_tuple(need.minimum)


def best_torch_wheel(driver: str, *, windows: bool = False) -> str | None:
    """The newest torch CUDA wheel tag (e.g. 'cu124') this driver can run; None when none fits."""
    for cuda in TORCH_CUDA_WHEELS:
        need = driver_need(cuda, windows=windows)
        # The toolkit column is Linux numbering; on Windows only the minimum is compared.
        toolkit_ok = windows or need.toolkit is None or version_tuple(driver) >= version_tuple(need.toolkit)
        if need.minimum is not None and not driver_too_old(driver, need) and toolkit_ok:
            return "cu" + cuda.replace(".", "")
    return None
