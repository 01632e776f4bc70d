"""The compatibility facts of build_matrix.toml applied to one cell: why a combination cannot exist.

Pure functions over the parsed config; ``matrix.expand`` turns a reason into a located error.
"""

from __future__ import annotations

from packaging.version import Version

from .config import DEFAULT_PLATFORM, Config, TorchRelease


def _major(version: str) -> str:
    return version.split(".")[0]


def torch_cuda_build(torch: TorchRelease, cuda: str, cxx11abi: bool | None = None,
                     platform: str = DEFAULT_PLATFORM) -> str | None:
    """The torch CUDA build that a wheel compiled with toolkit ``cuda`` is built and run against.

    Same CUDA major is required (the extension links libcudart.so.<major>); within a major the highest build
    not newer than the toolkit wins, else the lowest newer one (minor-version compatibility). Only builds
    published for ``platform`` with the cell's C++ ABI count (torch 2.6: cu124 is pre-cxx11, cu126 cxx11), so a
    cu12 ABI FALSE wheel of torch 2.6 compiles against torch+cu124 and the TRUE one against torch+cu126.
    """
    builds = torch.builds(platform)
    if builds is None:
        return None
    same_major = sorted((c for c in builds.cuda if _major(c) == _major(cuda)
                         and (cxx11abi is None or cxx11abi in builds.abis(c))), key=Version)
    if not same_major:
        return None
    older = [c for c in same_major if Version(c) <= Version(cuda)]
    return older[-1] if older else same_major[0]


def from_pypi(torch: TorchRelease, torch_cuda: str, platform: str) -> bool:
    """Whether PyPI's plain ``torch`` wheel is that CUDA build. ``pypi-cuda`` describes the x86_64 wheel: PyPI's
    aarch64 torch was CPU-only (pytorch#160162, #168065), so other platforms always take PyTorch's index."""
    return platform == DEFAULT_PLATFORM and torch.pypi_cuda == torch_cuda


def _flag(abi: bool) -> str:
    return "TRUE" if abi else "FALSE"


def impossible(
    config: Config, *, package: str, version: str, torch: str, cuda: str, python: str, cxx11abi: bool,
    archs: tuple[str, ...], platform: str = DEFAULT_PLATFORM,
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
    builds = release.builds(platform)
    if builds is None:
        return f"torch {torch} publishes no {platform} CUDA build (no [torch.\"{torch}\".{platform}] table)"
    where = "" if platform == DEFAULT_PLATFORM else f" for {platform}"
    if cxx11abi not in builds.cxx11abi and cxx11abi not in {a for c in builds.cuda for a in builds.abis(c)}:
        return f"torch {torch} is not built with cxx11abi={_flag(cxx11abi)}{where} (builds: " + ", ".join(
            _flag(a) for a in builds.cxx11abi) + ")"
    if cuda not in config.cuda:
        return f"CUDA {cuda} has no [cuda.\"{cuda}\"] entry (toolkit pins and torch index)"
    if torch_cuda_build(release, cuda, platform=platform) is None:
        return f"torch {torch} has no CUDA {_major(cuda)}.x build{where} (its builds: {', '.join(builds.cuda)})"
    if torch_cuda_build(release, cuda, cxx11abi, platform) is None:
        return (f"torch {torch} has no CUDA {_major(cuda)}.x build{where} with cxx11abi={_flag(cxx11abi)} ("
                + ", ".join(f"cu{c.replace('.', '')}: {'/'.join(_flag(a) for a in builds.abis(c))}"
                            for c in builds.cuda) + ")")
    pinned = pkg.versions[version]
    if not pinned.cuda.contains(cuda, prereleases=True):
        return f"{package} {version} builds with CUDA {pinned.cuda} only, not {cuda}"
    if pinned.cxx_std is not None and pinned.cxx_std < release.cxx_std:
        return (f"{package} {version}'s setup.py compiles with -std=c++{pinned.cxx_std}, torch {torch}'s headers "
                f"require C++{release.cxx_std}")
    low = [a for a in archs if int(a.rstrip("af")) < pkg.min_arch]
    if low:
        return f"{package} does not support sm{','.join(low)} (needs sm{pkg.min_arch} or newer)"
    return None
