#!/usr/bin/env python3
"""Install the CUDA toolkit (CUDA_HOME) pinned in containers/pins.toml into --prefix.

    python3.12 install-cuda.py --pins pins.toml --cuda 13.0 --prefix /opt/cuda-13.0 [--wheel-dir DIR]

source = "pypi" (CUDA 13): pip installs the pinned wheels (`--require-hashes --no-deps`) into a staging
folder, then merges their trees: site-packages/nvidia/cu13/{bin,include,lib,nvvm} (wheels laid out one folder
per component, nvidia/<component>/..., merge the same way). torch's cpp_extension wants a classic layout, so
`lib64 -> lib` and unversioned `libX.so -> libX.so.N` links are added (`-lcudart` must resolve).
`--wheel-dir` installs offline from a folder of downloaded wheels.
source = "rpm" (CUDA 12, whose PyPI wheels carry no nvcc driver): dnf installs the pinned packages from
NVIDIA's RHEL 8 repo into /usr/local/cuda-<ver>; --prefix becomes a link to it (RHEL-family images only).
Stdlib only (Python >= 3.11).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


RHEL8_REPO = """[cuda-rhel8]
name=NVIDIA CUDA (RHEL 8)
baseurl=https://developer.download.nvidia.com/compute/cuda/repos/rhel8/{arch}
enabled=1
gpgcheck=1
gpgkey=https://developer.download.nvidia.com/compute/cuda/repos/rhel8/{arch}/D42D0685.pub
"""


def cuda_table(pins: dict, cuda: str) -> dict:
    table = pins.get("cuda", {}).get(cuda)
    if table is None:
        sys.exit(f"install-cuda: CUDA {cuda!r} is not pinned; pinned: {', '.join(pins.get('cuda', {}))} "
                 "(add it: scripts/update-pins.py --cuda ...)")
    if source_for(cuda) != table.get("source"):
        sys.exit(f"install-cuda: CUDA {cuda} must come from source = {source_for(cuda)!r}, pins.toml says "
                 f"{table.get('source')!r}: CUDA 11/12 PyPI wheels carry no nvcc driver, only ptxas and libnvvm")
    return table


def source_for(cuda: str) -> str:
    """Where a CUDA_HOME of ``cuda`` can come from: PyPI wheels from CUDA 13 (nvcc, cicc, fatbinary, nvlink all
    in wheels); before that only NVIDIA's RHEL 8 repo (nvidia-cuda-nvcc-cu12 has no bin/nvcc)."""
    return "pypi" if int(cuda.split(".")[0]) >= 13 else "rpm"


def requirements(table: dict, arch: str) -> str:
    hashes = table["sha256"][arch]
    return "".join(f"{name}=={ver} --hash=sha256:{hashes[name]}\n" for name, ver in table["versions"].items())


def pip_install(reqs: str, target: Path, wheel_dir: Path | None) -> None:
    req_file = target.parent / "requirements.txt"
    req_file.write_text(reqs)
    source = ["--no-index", f"--find-links={wheel_dir}"] if wheel_dir else []
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        *source,
        f"--target={target}",
        "-r",
        str(req_file),
    ]
    subprocess.run(cmd, check=True)


def install_rpms(table: dict, cuda: str, arch: str, prefix: Path) -> None:
    repo_arch = "sbsa" if arch == "aarch64" else arch
    Path("/etc/yum.repos.d/cuda-rhel8.repo").write_text(RHEL8_REPO.format(arch=repo_arch))
    packages = [f"{name}-{version}" for name, version in table["rpms"].items()]
    subprocess.run(["dnf", "install", "-y", "--setopt=install_weak_deps=False", *packages], check=True)
    subprocess.run(["dnf", "clean", "all"], check=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if Path(f"/usr/local/cuda-{cuda}") != prefix:
        prefix.symlink_to(f"/usr/local/cuda-{cuda}")


def install_wheels(table: dict, arch: str, prefix: Path, wheel_dir: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="install-cuda-") as tmp:
        staging = Path(tmp, "site-packages")
        pip_install(requirements(table, arch), staging, wheel_dir)
        prefix.mkdir(parents=True, exist_ok=True)
        merge(staging, prefix)
    add_links(prefix)


def merge(staging: Path, prefix: Path) -> None:
    """Copy every nvidia/<component>/ tree over ``prefix`` (cu12: many components; cu13: just 'cu13')."""
    for component in sorted((staging / "nvidia").iterdir()):
        if component.is_dir() and component.name != "__pycache__":
            shutil.copytree(
                component,
                prefix,
                symlinks=True,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__init__.py", "__pycache__"),
            )


def add_links(prefix: Path) -> None:
    lib = prefix / "lib"
    if not (prefix / "lib64").exists():
        (prefix / "lib64").symlink_to("lib")
    for versioned in sorted(lib.glob("lib*.so.*")):
        stem, _, suffix = versioned.name.partition(".so.")
        unversioned = lib / f"{stem}.so"
        if suffix.isdigit() and not unversioned.exists():  # libcudart.so.13, not libfoo.so.13.0.88
            unversioned.symlink_to(versioned.name)


def verify(prefix: Path, cuda: str) -> None:
    out = subprocess.run(
        [prefix / "bin" / "nvcc", "--version"], capture_output=True, text=True, check=True
    ).stdout
    if f"release {cuda}" not in out:
        sys.exit(f"install-cuda: {prefix}/bin/nvcc is not CUDA {cuda}:\n{out}")
    if not (prefix / "lib" / "libcudart.so").exists():
        sys.exit(f"install-cuda: {prefix}/lib/libcudart.so is missing")
    print(f"install-cuda: CUDA {cuda} ready in {prefix} (set CUDA_HOME={prefix})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pins", type=Path, default=Path(__file__).with_name("pins.toml"))
    parser.add_argument("--cuda", required=True, help="major.minor, e.g. 12.8 or 13.0")
    parser.add_argument("--prefix", type=Path, required=True)
    parser.add_argument("--arch", default=platform.machine())
    parser.add_argument("--wheel-dir", type=Path, help="install offline from these downloaded wheels")
    parser.add_argument("--print-requirements", action="store_true", help="print the hashed wheel pins, stop")
    args = parser.parse_args()
    table = cuda_table(tomllib.loads(args.pins.read_text()), args.cuda)
    if args.print_requirements:
        print(requirements(table, args.arch), end="")
        return 0
    if table["source"] == "rpm":
        install_rpms(table, args.cuda, args.arch, args.prefix)
    else:
        install_wheels(table, args.arch, args.prefix, args.wheel_dir)
    verify(args.prefix, args.cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
