"""A tiny real CUDA torch extension, built once and cached, packed into wheels labelled right or wrong.

The ``.so`` is built with the host compilers against torch 2.14.1's headers and libraries (``--no-deps``
into the cache), for sm_80 + sm_90 SASS and compute_90 PTX, in both C++ ABIs. Cached under
``<wheelfarm cache>/test-ext/<hash of sources and flags>``: only the first session pays (~2-4 min, 2 cores).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from wheelfarm.paths import cache_dir

TORCH_VERSION = "2.14.1"
TORCH_TAG = "2.14"
CUDA_TAG = "cu13"
ARCHS = ("80", "90")
PACKAGE = "audit-probe"
VERSION = "0.1.0"

KERNEL_CU = r"""
#include <cuda_runtime.h>
__global__ void scale_kernel(float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
extern "C" int probe_scale_launch(float* x, float a, int n, cudaStream_t stream) {
  scale_kernel<<<(n + 255) / 256, 256, 0, stream>>>(x, a, n);
  return (int)cudaGetLastError();
}
"""

EXT_CPP = r"""
#include <torch/extension.h>
#include <string>
#include <cuda_runtime.h>
extern "C" int probe_scale_launch(float* x, float a, int n, cudaStream_t stream);
static std::string describe(const at::Tensor& x) {
  return std::string("tensor of ") + std::to_string(x.numel());
}
at::Tensor scale_(at::Tensor x, double a) {
  TORCH_CHECK(x.is_cuda(), "scale_: expected a CUDA tensor, got ", describe(x));
  TORCH_CHECK(x.scalar_type() == at::kFloat, "scale_: expected float32");
  int err = probe_scale_launch(x.data_ptr<float>(), (float)a, (int)x.numel(), nullptr);
  TORCH_CHECK(err == 0, "kernel launch failed: ", err);
  return x;
}
PYBIND11_MODULE(_C, m) { m.def("scale_", &scale_, "scale a float32 CUDA tensor in place"); }
"""

GENCODE = (
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-gencode",
    "arch=compute_90,code=compute_90",
)


def cuda_home() -> Path:
    return Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


def toolchain_missing() -> str | None:
    if not (cuda_home() / "bin" / "nvcc").is_file():
        return f"no nvcc under CUDA_HOME={cuda_home()}"
    if shutil.which("g++") is None:
        return "no g++"
    return None


def _root() -> Path:
    path = cache_dir() / "test-ext"
    path.mkdir(parents=True, exist_ok=True)
    return path


def torch_dir() -> Path:
    """``<cache>/test-ext/torch-2.14.1/torch``, installed ``--no-deps --target``: headers and libraries."""
    target = _root() / f"torch-{TORCH_VERSION}"
    if not (target / ".complete").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-compile",
                "--target",
                str(partial),
                f"torch=={TORCH_VERSION}",
            ],
            check=True,
        )
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        (target / ".complete").touch()
    return target / "torch"


def build_extension(*, cxx11abi: bool) -> Path:
    """The extension ``.so`` for one ABI (cached by a hash of everything that goes into it)."""
    torch = torch_dir()
    py_include = sysconfig.get_paths()["include"]
    flags = [
        "-fPIC",
        "-O1",
        "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(cxx11abi)}",
        "-DTORCH_EXTENSION_NAME=_C",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-I{torch / 'include'}",
        f"-I{torch / 'include/torch/csrc/api/include'}",
        f"-I{cuda_home() / 'include'}",
        f"-I{py_include}",
    ]
    key = hashlib.sha256(
        "\0".join([KERNEL_CU, EXT_CPP, *flags, *GENCODE, TORCH_VERSION]).encode()
    ).hexdigest()[:16]
    out = _root() / key / "_C.so"
    if out.exists():
        return out
    work = out.parent.with_name(key + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / "kernel.cu").write_text(KERNEL_CU)
    (work / "ext.cpp").write_text(EXT_CPP)
    run = lambda *cmd: subprocess.run([str(c) for c in cmd], cwd=work, check=True)  # noqa: E731
    run(cuda_home() / "bin/nvcc", "-c", "kernel.cu", "-o", "kernel.o", "-Xcompiler", "-fPIC", *GENCODE)
    run("g++", "-c", "ext.cpp", "-o", "ext.o", *flags)
    run(
        "g++",
        "-shared",
        "-o",
        "_C.so",
        "kernel.o",
        "ext.o",
        f"-L{torch / 'lib'}",
        "-lc10",
        "-ltorch",
        "-ltorch_cpu",
        "-ltorch_python",
        f"-L{cuda_home() / 'lib64'}",
        "-lcudart",
    )
    shutil.rmtree(out.parent, ignore_errors=True)
    work.rename(out.parent)
    return out


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


@dataclass(frozen=True)
class Probe:
    """What to put in a probe wheel; the defaults make a correctly labelled one."""

    so: Path
    cxx11abi_label: bool = True
    metadata_version: str | None = None  # default: the file name's version
    requires_dist: tuple[str, ...] = (f"torch=={TORCH_TAG}.*",)
    requires_python: str | None = ">=3.10"
    platform: str = "linux_x86_64"
    extra_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"{VERSION}+{CUDA_TAG}torch{TORCH_TAG}cxx11abi{'TRUE' if self.cxx11abi_label else 'FALSE'}"

    @property
    def filename(self) -> str:
        py = python_tag()
        return f"{PACKAGE.replace('-', '_')}-{self.version}-{py}-{py}-{self.platform}.whl"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(dest: Path, probe: Probe) -> Path:
    """Pack ``probe`` into ``dest/<convention name>`` with METADATA, WHEEL and a valid RECORD."""
    dist = f"{PACKAGE.replace('-', '_')}-{probe.version}.dist-info"
    ext = f"audit_probe/_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {PACKAGE}",
        f"Version: {probe.metadata_version or probe.version}",
    ]
    meta += [f"Requires-Dist: {r}" for r in probe.requires_dist]
    meta += [f"Requires-Python: {probe.requires_python}"] if probe.requires_python else []
    py = python_tag()
    files = {
        "audit_probe/__init__.py": b"from . import _C\n",
        ext: probe.so.read_bytes(),
        **probe.extra_files,
        f"{dist}/METADATA": ("\n".join(meta) + "\n").encode(),
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: wheelfarm-tests\nRoot-Is-Purelib: false\n"
        f"Tag: {py}-{py}-{probe.platform}\n".encode(),
    }
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{dist}/RECORD,,"]) + "\n"
    files[f"{dist}/RECORD"] = record.encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / probe.filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tamper(wheel: Path, member: str, data: bytes) -> Path:
    """Replace one member's bytes, keeping RECORD as it was."""
    out = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename == member else src.read(info))
    out.replace(wheel)
    return wheel
