#!/usr/bin/env python3
"""Regenerate containers/pins.toml: manylinux base-image digests and exact nvidia-* CUDA wheel pins.

    python scripts/update-pins.py                       # refresh everything that is reachable
    python scripts/update-pins.py --cuda 12.8 13.0      # choose the CUDA minors to pin
    python scripts/update-pins.py --cibuildwheel-pins pinned_docker_images.cfg  # images: cibuildwheel's

CUDA: for each major.minor, the newest `cuda-toolkit` release of that minor on PyPI (JSON API; TOOLKIT_RELEASE
overrides) names the component versions (`==X.*`); pip's resolver (`pip install --dry-run --report`, per
arch, manylinux_2_28 platforms) turns them into exact versions and sha256s. Components numbered like the
toolkit (nvrtc, nvjitlink, ...) are capped at the same minor: unpinned they drift to a newer one. CUDA 12 is
pinned as NVIDIA RHEL 8 repo RPMs of the same versions (source = "rpm"): its PyPI wheels have no nvcc.
Images: `skopeo inspect docker://quay.io/pypa/manylinux_2_28_<arch>` when the registry is reachable, else
cibuildwheel's pinned_docker_images.cfg when given, else the current pins are kept (with a warning).
Stdlib only; needs pip, and skopeo for images.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


CONTAINERS = Path(__file__).resolve().parent.parent / "containers"
PINS = CONTAINERS / "pins.toml"
ARCHS = ("x86_64", "aarch64")
IMAGE = "quay.io/pypa/manylinux_2_28_{arch}"
# cuda-toolkit extras a torch CUDA extension build needs: the compiler, runtime, CCCL headers, and the library
# headers torch's ATen/cuda/CUDAContextLight.h includes (cublas, cusparse, cusolver) plus curand.
EXTRAS = ("nvcc", "crt", "nvvm", "cudart", "cccl", "cublas", "cusparse", "cusolver", "curand")
# Newest gcc-toolset each CUDA minor supports as host compiler (CUDA installation guide, "host compiler"
# table); manylinux_2_28 ships gcc-toolset-14 as its default.
GCC_TOOLSET = {"12.4": 13, "12.6": 13, "12.8": 14, "12.9": 14, "13.0": 14, "13.1": 14, "13.2": 14}
# Numbered like the toolkit itself: capped at its minor (unpinned, cublas pulls nvrtc 12.9 into 12.8).
# CUDA 12 wheels on PyPI carry no nvcc driver (nvidia-cuda-nvcc-cu12 holds only ptxas, libnvvm, libdevice and
# headers), so CUDA 12 comes from NVIDIA's RHEL 8 dnf repo: the same component versions, as these packages.
RPM_NAMES = {
    "nvidia-cuda-nvcc-cu12": "cuda-nvcc",
    "nvidia-cuda-runtime-cu12": "cuda-cudart-devel",
    "nvidia-cuda-cccl-cu12": "cuda-cccl",
    "nvidia-cuda-nvrtc-cu12": "cuda-nvrtc-devel",
    "nvidia-cublas-cu12": "libcublas-devel",
    "nvidia-cusparse-cu12": "libcusparse-devel",
    "nvidia-cusolver-cu12": "libcusolver-devel",
    "nvidia-curand-cu12": "libcurand-devel",
    "nvidia-nvjitlink-cu12": "libnvjitlink-devel",
}
# cuda-toolkit releases that are a CUDA release (the RHEL repo's contents); otherwise the newest of the minor.
# PyPI's 12.8.2 is newer than CUDA 12.8 Update 1 (12.8.1): its cuBLAS 12.8.5.5 is not known to be in the repo;
# likewise PyPI's 12.9.2 (cuBLAS 12.9.2.10) against CUDA 12.9 Update 1 (12.9.1, what upstream flash-attn uses).
TOOLKIT_RELEASE = {"12.8": "12.8.1", "12.9": "12.9.1"}
TOOLKIT_NUMBERED = (
    "nvidia-cuda-nvcc",
    "nvidia-cuda-runtime",
    "nvidia-cuda-nvrtc",
    "nvidia-cuda-cccl",
    "nvidia-cuda-crt",
    "nvidia-nvvm",
    "nvidia-nvjitlink",
)


def pypi_releases(name: str) -> list[str]:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
        return list(json.load(r)["releases"])


def newest_toolkit(minor: str, releases: list[str]) -> str:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    same = [v for v in releases if re.fullmatch(re.escape(minor) + r"\.\d+", v)]
    if not same:
        sys.exit(f"update-pins: no cuda-toolkit {minor}.* release on PyPI")
    return max(same, key=key)


def resolve(toolkit: str, arch: str) -> dict[str, tuple[str, str]]:
    """{package: (version, sha256)} that pip picks for a manylinux_2_28 machine of ``arch``."""
    major, minor = toolkit.split(".")[:2]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp, "constraints.txt")
        suffix = "-cu12" if major == "12" else ""
        cap = f"<{major}.{int(minor) + 1}"
        constraints.write_text("".join(f"{p}{suffix}{cap}\n" for p in TOOLKIT_NUMBERED))
        report = Path(tmp, "report.json")
        platforms = [f"--platform=manylinux_2_{n}_{arch}" for n in range(28, 4, -1)]
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--only-binary=:all:",
            "--python-version=3.12",
            *platforms,
            f"--target={tmp}/t",
            f"--report={report}",
            f"--constraint={constraints}",
            f"cuda-toolkit[{','.join(EXTRAS)}]=={toolkit}",
        ]
        subprocess.run(cmd, check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
        items = json.loads(report.read_text())["install"]
    return {
        i["metadata"]["name"]: (
            i["metadata"]["version"],
            i["download_info"]["archive_info"]["hashes"]["sha256"],
        )
        for i in items
        if i["metadata"]["name"] != "cuda-toolkit"
    }


def cuda_pins(minor: str, releases: list[str]) -> dict:
    toolkit = TOOLKIT_RELEASE.get(minor) or newest_toolkit(minor, releases)
    per_arch = {arch: resolve(toolkit, arch) for arch in ARCHS}
    versions = {name: v for name, (v, _) in per_arch["x86_64"].items()}
    for arch, got in per_arch.items():
        if {n: v for n, (v, _) in got.items()} != versions:
            sys.exit(f"update-pins: CUDA {minor}: {arch} resolves to other versions than x86_64: {got}")
    pin = {"toolkit": toolkit, "gcc_toolset": GCC_TOOLSET.get(minor, 14), "versions": versions}
    if minor.startswith("12."):
        return {"source": "rpm", **pin, "rpms": rpm_pins(minor, versions)}
    sha = {arch: {n: h for n, (_, h) in got.items()} for arch, got in per_arch.items()}
    return {"source": "pypi", **pin, "sha256": sha}


def rpm_pins(minor: str, versions: dict[str, str]) -> dict[str, str]:
    """NVIDIA's RHEL 8 repo packages carrying the same component versions as the cu12 wheels."""
    suffix = minor.replace(".", "-")
    return {f"{RPM_NAMES[n]}-{suffix}": f"{v}-1" for n, v in sorted(versions.items()) if n in RPM_NAMES}


def skopeo_image(arch: str) -> dict | None:
    if not shutil.which("skopeo"):
        return None
    name = IMAGE.format(arch=arch)
    cmd = ["skopeo", "inspect", "--retry-times=1", f"docker://{name}:latest"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout)
    tag = next(
        (t for t in reversed(info.get("RepoTags", [])) if re.fullmatch(r"\d{4}\.\d\d\.\d\d-\d+", t)), ""
    )
    today = datetime.date.today().isoformat()
    return {
        "name": name,
        "digest": info["Digest"],
        "tag": tag,
        "source": f"skopeo inspect {name}:latest, {today}",
    }


def cibuildwheel_images(cfg: Path, note: str) -> dict[str, dict]:
    """Parse cibuildwheel's resources/pinned_docker_images.cfg (its [x86_64]/[aarch64] sections)."""
    found: dict[str, dict] = {}
    section = ""
    for line in cfg.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = m.group(1)
        elif section in ARCHS and section not in found and line.startswith("manylinux_2_28 ="):
            ref, _, tag = line.split("=", 1)[1].partition("#")
            name, digest = ref.strip().split("@")
            found[section] = {
                "name": name,
                "digest": digest,
                "tag": tag.strip(),
                "source": note or f"cibuildwheel {cfg.name}",
            }
    return found


def image_pins(old: dict, cfg: Path | None, note: str) -> dict[str, dict]:
    from_cfg = cibuildwheel_images(cfg, note) if cfg else {}
    pins = {}
    for arch in ARCHS:
        pin = skopeo_image(arch) or from_cfg.get(arch) or old.get(arch)
        if pin is None:
            sys.exit(
                f"update-pins: no digest for manylinux_2_28_{arch}: registry unreachable and no earlier pin"
            )
        if pin is old.get(arch):
            print(f"update-pins: warning: registry unreachable, kept the {arch} image pin", file=sys.stderr)
        pins[arch] = pin
    return pins


def tool_pins() -> dict[str, str]:
    with urllib.request.urlopen("https://pypi.org/pypi/ninja/json", timeout=60) as r:
        return {"ninja": json.load(r)["info"]["version"]}


def rewrite_containerfiles(images: dict[str, dict]) -> None:
    """Point each Containerfile.manylinux_2_28_<arch>'s FROM line (and its comment) at the pinned digest."""
    for arch, pin in images.items():
        path = CONTAINERS / f"Containerfile.manylinux_2_28_{arch}"
        text = re.sub(
            r"(?m)^# pinned: .*$", f"# pinned: {pin['name']}:{pin['tag']} ({pin['source']})", path.read_text()
        )
        text = re.sub(r"(?m)^FROM \S+$", f"FROM {pin['name']}@{pin['digest']}", text, count=1)
        path.write_text(text)


def q(s: object) -> str:
    return json.dumps(s) if isinstance(s, str) else str(s)


def render(images: dict[str, dict], cuda: dict[str, dict], tools: dict[str, str]) -> str:
    out = [
        "# Generated by scripts/update-pins.py: rerun it instead of editing (docs/containers.md).",
        "# Base images pinned by digest; CUDA components as exact nvidia-* wheels (sha256 per arch) or RPMs.",
        "",
    ]
    for arch, pin in images.items():
        out += [f"[image.{arch}]", *(f"{k} = {q(v)}" for k, v in pin.items()), ""]
    out += ["[tools]", *(f"{k} = {q(v)}" for k, v in tools.items()), ""]
    for minor, pin in cuda.items():
        head = [
            f"source = {q(pin['source'])}",
            f"toolkit = {q(pin['toolkit'])}",
            f"gcc_toolset = {pin['gcc_toolset']}",
        ]
        out += [f'[cuda."{minor}"]', *head, ""]
        out += [
            f'[cuda."{minor}".versions]',
            *(f"{q(n)} = {q(v)}" for n, v in sorted(pin["versions"].items())),
            "",
        ]
        if "rpms" in pin:
            out += [f'[cuda."{minor}".rpms]', *(f"{q(n)} = {q(v)}" for n, v in pin["rpms"].items()), ""]
        for arch, hashes in pin.get("sha256", {}).items():
            out += [
                f'[cuda."{minor}".sha256.{arch}]',
                *(f"{q(n)} = {q(h)}" for n, h in sorted(hashes.items())),
                "",
            ]
    return "\n".join(out)


def main() -> int:
    old = tomllib.loads(PINS.read_text()) if PINS.exists() else {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuda", nargs="+", default=sorted(old.get("cuda", {})) or ["12.8", "13.0"])
    parser.add_argument("--cibuildwheel-pins", type=Path, help="cibuildwheel's pinned_docker_images.cfg")
    parser.add_argument("--source-note", default="", help="where --cibuildwheel-pins came from (repo@commit)")
    parser.add_argument("--output", type=Path, default=PINS)
    args = parser.parse_args()
    releases = pypi_releases("cuda-toolkit")
    cuda = {minor: cuda_pins(minor, releases) for minor in args.cuda}
    images = image_pins(old.get("image", {}), args.cibuildwheel_pins, args.source_note)
    args.output.write_text(render(images, cuda, tool_pins()))
    rewrite_containerfiles(images)
    print(f"update-pins: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
