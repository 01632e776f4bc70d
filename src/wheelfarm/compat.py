"""The compatibility facts of build_matrix.toml applied to one cell: why a combination cannot exist.

Pure functions over the parsed config; ``matrix.expand`` turns a reason into a located error.
"""

from __future__ import annotations

from packaging.version import Version

from .config import Config, TorchRelease


def _major(version: str) -> str:
    return version.split(".")[0]


def torch_cuda_build(torch: TorchRelease, cuda: str) -> str | None:
    """The torch CUDA build that a wheel compiled with toolkit ``cuda`` runs against.

    Same CUDA major is required (the extension links libcudart.so.<major>); within a major the highest build
    not newer than the toolkit wins, else the lowest newer one (minor-version compatibility).
    """
    same_major = sorted((c for c in torch.cuda if _major(c) == _major(cuda)), key=Version)
    if not same_major:
        return None
    older = [c for c in same_major if Version(c) <= Version(cuda)]
    return older[-1] if older else same_major[0]


def impossible(
    config: Config, *, package: str, version: str, torch: str, cuda: str, python: str, cxx11abi: bool,
    archs: tuple[str, ...],
) -> str | None:
    """A sentence saying why the cell cannot be built, or None when it can."""
    pkg = config.packages.get(package)
    if pkg is None:
        return f"unknown package {package!r} (known: {', '.join(sorted(config.packages))})"
    if version not in pkg.versions:
        return f"{package} {version} has no [packages.{package}.versions.\"{version}\"] entry with its sha256"
    release = config.torch.get(torch)
    if release is None:
        return f"torch {torch} is not in the [torch] table (known: {', '.join(sorted(config.torch, key=Version))})"
    if not release.python.contains(python, prereleases=True):
        return f"torch {torch} has no wheels for Python {python} (it supports Python {release.python})"
    if cxx11abi not in release.cxx11abi:
        flag = "TRUE" if cxx11abi else "FALSE"
        return f"torch {torch} is not built with cxx11abi={flag} (builds: " + ", ".join(
            "TRUE" if a else "FALSE" for a in release.cxx11abi) + ")"
    if cuda not in config.cuda:
        return f"CUDA {cuda} has no [cuda.\"{cuda}\"] entry (toolkit pins and torch index)"
    if torch_cuda_build(release, cuda) is None:
        return f"torch {torch} has no CUDA {_major(cuda)}.x build (its builds: {', '.join(release.cuda)})"
    low = [a for a in archs if int(a.rstrip("af")) < pkg.min_arch]
    if low:
        return f"{package} does not support sm{','.join(low)} (needs sm{pkg.min_arch} or newer)"
    return None
