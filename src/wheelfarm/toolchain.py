"""The toolchain of a cell: a Python with exactly the cell's torch, a CUDA_HOME made from pinned PyPI wheels,
and a host compiler that CUDA version supports — each checked before anything compiles.

Never trust ``which nvcc``: CUDA_HOME is always set explicitly (DESIGN.md).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import log, naming
from .compat import from_pypi, torch_cuda_build
from .config import Config, CudaRelease
from .errors import BadInput, BuildFailed
from .matrix import Cell
from .paths import cache_dir
from .proc import run

_PROBE = (
    "import json, torch, torch.utils.cpp_extension as c;"
    "import sys;"
    "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
    " 'cxx11abi': bool(torch._C._GLIBCXX_USE_CXX11_ABI), 'lib': c.TORCH_LIB_PATH,"
    " 'python': '%d.%d' % sys.version_info[:2]}))"
)


@dataclass(frozen=True)
class Toolchain:
    python: Path
    cuda_home: Path
    torch_version: str
    torch_cuda: str | None
    cxx11abi: bool
    torch_lib: Path
    nvcc_version: str
    compiler: str
    compiler_version: str
    compiler_major: int

    def env(self) -> dict[str, str]:
        """Environment for the build: explicit CUDA_HOME, its bin first on PATH, the chosen compiler."""
        path = os.pathsep.join([str(self.cuda_home / "bin"), str(self.python.parent), os.environ.get("PATH", "")])
        env = {"CUDA_HOME": str(self.cuda_home), "CUDA_PATH": str(self.cuda_home), "PATH": path}
        if self.compiler:
            env["CXX"] = self.compiler
        return env

    def to_json(self) -> dict[str, str | bool | None]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


# ------------------------------------------------------------------------------------------ Python


def find_python(version: str) -> Path:
    """An interpreter for CPython ``X.Y``: this one, a pyenv install, or ``pythonX.Y`` on PATH."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return Path(sys.executable)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise BadInput(f"no Python {version} interpreter found (looked at this interpreter, {pyenv}, PATH)",
                   hint=f"install it (e.g. `pyenv install {version}`) or use --backend container")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_build_env(config: Config, cell: Cell, *, refresh: bool = False) -> Path:
    """A venv (cached, shared by all cells with the same Python/torch/CUDA build) holding the cell's torch."""
    release = config.torch[cell.torch]
    torch_cuda = torch_cuda_build(release, cell.cuda, cell.cxx11abi, cell.platform)
    assert torch_cuda is not None  # matrix.expand rejected the cell otherwise
    tag = f"{cell.python_tag}-torch{cell.torch}-cu{torch_cuda.replace('.', '')}"
    venv = cache_dir() / "venvs" / tag
    marker = venv / ".wheelfarm-ready"
    if marker.exists() and not refresh:
        return _venv_python(venv)
    shutil.rmtree(venv, ignore_errors=True)
    with log.step(f"build env {tag}: torch=={cell.torch}.* for CUDA {torch_cuda}"):
        run([find_python(cell.python), "-m", "venv", venv])
        py = _venv_python(venv)
        pip: list[str | Path] = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        run([*pip, "--upgrade", "pip", "setuptools>=69", "wheel", "ninja", "packaging", "psutil"])
        torch_req = f"torch=={cell.torch}.*"
        if from_pypi(release, torch_cuda, cell.platform):
            run([*pip, torch_req])
        else:
            index = config.cuda[torch_cuda].index_url if torch_cuda in config.cuda else None
            if index is None:
                raise BadInput(f"torch {cell.torch} for CUDA {torch_cuda} is not on PyPI and [cuda.\"{torch_cuda}\"] "
                               "gives no index-url")
            run([*pip, "--index-url", index, "--extra-index-url", "https://pypi.org/simple", torch_req])
        marker.write_text(json.dumps({"cell": cell.to_json(), "torch_cuda": torch_cuda}))
    return _venv_python(venv)


# ------------------------------------------------------------------------------------------ CUDA


def _link_tree(src: Path, dest: Path) -> None:
    """Merge ``src`` into ``dest`` as symlinks (cu12 wheels ship one folder per component)."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir() and not path.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)


def assemble_cuda_home(site: Path, dest: Path) -> Path:
    """Turn ``pip install --target site`` output into one CUDA_HOME with bin/, include/, lib/, lib64/."""
    nvidia = site / "nvidia"
    cu13 = sorted(nvidia.glob("cu1[3-9]"))
    if cu13:
        root = cu13[-1]
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for component in sorted(p for p in nvidia.iterdir() if p.is_dir() and p.name.startswith("cuda_")):
            _link_tree(component, dest)
        root = dest
    lib = root / "lib"
    if not (root / "lib64").exists():
        (root / "lib64").symlink_to("lib")
    for runtime in sorted(lib.glob("libcudart.so.*")):
        if re.fullmatch(r"libcudart\.so\.\d+", runtime.name) and not (lib / "libcudart.so").exists():
            (lib / "libcudart.so").symlink_to(runtime.name)
    return root


def _no_nvcc_in_wheels(cuda: CudaRelease, what: str) -> BadInput:
    arch = platform.machine()
    return BadInput(f"{what}: CUDA {cuda.version}'s PyPI wheels carry no nvcc (nvidia-cuda-nvcc-cu12 holds only "
                    "ptxas, libnvvm and headers; only CUDA 13+ wheels form a toolkit), so a host build needs that "
                    "toolkit installed",
                    hint=f"pass --cuda-home /usr/local/cuda-{cuda.version} (a CUDA {cuda.version} toolkit), or "
                         f"--backend container with wheelfarm/manylinux_2_28_{arch}-cuda{cuda.version}, whose recipe "
                         "installs it from NVIDIA's RHEL 8 repo (containers/pins.toml, docs/containers.md)")


def check_host(config: Config, cells: list[Cell], cuda_home: Path | None) -> None:
    """What a host build of ``cells`` lacks, refused before anything is downloaded or built: a CUDA 11/12
    toolkit (no nvcc on PyPI) when no --cuda-home names one, or a platform other than this machine's."""
    here = f"linux_{platform.machine()}"
    foreign = sorted({c.platform for c in cells} - {here})
    if foreign:
        raise BadInput(f"{len([c for c in cells if c.platform != here])} selected cell(s) are {', '.join(foreign)}; "
                       f"this host builds {here} wheels only",
                       hint=f"add --select platform={here}, or build them on such a runner (the farm pipeline "
                            "sends each platform's jobs to its [platforms] runner)")
    if cuda_home is None:
        for version in sorted({c.cuda for c in cells}):
            cuda = config.cuda[version]
            if not cuda.nvcc_in_wheels:
                count = len([c for c in cells if c.cuda == version])
                raise _no_nvcc_in_wheels(cuda, f"{count} selected cell(s) build with CUDA {version}")


def ensure_cuda_home(cuda: CudaRelease, *, refresh: bool = False) -> Path:
    """CUDA_HOME for ``cuda`` from its pinned PyPI wheels; cached and shared by every cell with that CUDA."""
    if not cuda.nvcc_in_wheels:
        raise _no_nvcc_in_wheels(cuda, "no CUDA_HOME")
    base = cache_dir() / "cuda" / cuda.version
    marker = base / "cuda_home"
    if marker.exists() and not refresh:
        return Path(marker.read_text().strip())
    shutil.rmtree(base, ignore_errors=True)
    with log.step(f"CUDA {cuda.version} toolkit from PyPI: {' '.join(cuda.toolkit)}"):
        run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
             "--target", base / "site", *cuda.toolkit])
        home = assemble_cuda_home(base / "site", base / "home")
    marker.write_text(str(home))
    return home


# ------------------------------------------------------------------------------------------ checks


def probe_torch(python: Path) -> dict[str, object]:
    out = run([python, "-c", _PROBE], capture=True, check=False, quiet=True)
    if out.returncode != 0:
        raise BadInput(f"{python} cannot import torch: {out.stderr.strip().splitlines()[-1:]}",
                       hint="install the cell's torch into that interpreter, or drop --python to get a managed env")
    facts: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return facts


def nvcc_version(cuda_home: Path) -> str:
    nvcc = cuda_home / "bin" / "nvcc"
    if not nvcc.exists():
        raise BadInput(f"no nvcc at {nvcc}", hint="set --cuda-home to a CUDA toolkit root (CUDA_HOME)")
    out = run([nvcc, "--version"], capture=True, quiet=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise BuildFailed(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return match.group(1)


def compiler_version(compiler: str) -> tuple[str, int]:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BadInput(f"host compiler {compiler!r} does not run: {exc}", hint="set CXX to g++ or clang++") from None
    first = out.splitlines()[0] if out else ""
    match = re.search(r"(\d+)\.\d+(\.\d+)?", first)
    return first, int(match.group(1)) if match else 0


def check_torch_build(cell: Cell, python: Path, version: str, torch_cuda: str | None) -> str:
    """The interpreter's torch is the cell's X.Y and a CUDA build; returns its CUDA version. (Host and container
    backends both refuse with these words.)"""
    if ".".join(version.split("+")[0].split(".")[:2]) != cell.torch:
        raise BadInput(f"{python} has torch {version}, the cell needs torch {cell.torch}")
    if not torch_cuda:
        raise BadInput(f"torch {version} in {python} is a CPU-only build; a CUDA build is needed")
    return torch_cuda


def check_abi(cell: Cell, python: Path, cxx11abi: bool) -> None:
    if cxx11abi != cell.cxx11abi:
        raise BadInput(f"ABI mismatch: torch in {python} has _GLIBCXX_USE_CXX11_ABI={int(cxx11abi)}, the cell "
                       f"asks for cxx11abi{cell.abi_flag}", hint="install the torch build with the cell's ABI")


def check(config: Config, cell: Cell, tc: Toolchain) -> None:
    """Refuse, before compiling, a toolchain that would build a wheel other than the cell claims."""
    torch_cuda = check_torch_build(cell, tc.python, tc.torch_version, tc.torch_cuda)
    if torch_cuda.split(".")[0] != tc.nvcc_version.split(".")[0]:
        raise BadInput(f"CUDA mismatch: nvcc at {tc.cuda_home} is {tc.nvcc_version} but torch {tc.torch_version} "
                       f"was built with CUDA {torch_cuda} (the majors must agree)",
                       hint=f"point CUDA_HOME at a CUDA {torch_cuda.split('.')[0]}.x toolkit")
    check_abi(cell, tc.python, tc.cxx11abi)
    if naming.era(cell.package, cell.version).cuda_digits == 2 and not _same_minor(tc.nvcc_version, cell.cuda):
        raise BadInput(f"CUDA mismatch: nvcc at {tc.cuda_home} is {tc.nvcc_version}, but {cell.wheel} names CUDA "
                       f"{cell.cuda} (flash-attn {cell.version}'s names carry major.minor)",
                       hint=f"point --cuda-home at a CUDA {cell.cuda} toolkit")
    cuda = config.cuda.get(cell.cuda)
    name = Path(tc.compiler).name
    limit = None if cuda is None else (cuda.max_clang if "clang" in name else cuda.max_gcc)
    if limit is not None and tc.compiler_major > limit:
        raise BadInput(f"host compiler {tc.compiler_version!r} is newer than CUDA {cell.cuda} supports "
                       f"(max {name.split('+')[0]} {limit})", hint="set CXX/CC to a supported compiler")


def _same_minor(nvcc: str, cuda: str) -> bool:
    return nvcc.split(".")[:2] == cuda.split(".")[:2]


def prepare(config: Config, cell: Cell, *, python: Path | None = None, cuda_home: Path | None = None) -> Toolchain:
    """Make (or take) the toolchain for ``cell`` and check it. ``python``/``cuda_home`` reuse what a runner has."""
    home = cuda_home or ensure_cuda_home(config.cuda[cell.cuda])  # first: a missing CUDA 12 stops before a venv
    py = python or ensure_build_env(config, cell)
    facts = probe_torch(py)
    compiler = os.environ.get("CXX", "g++")
    compiler_line, compiler_major = compiler_version(compiler)
    tc = Toolchain(
        python=py, cuda_home=home, torch_version=str(facts["torch"]),
        torch_cuda=facts["cuda"] and str(facts["cuda"]), cxx11abi=bool(facts["cxx11abi"]),  # type: ignore[arg-type]
        torch_lib=Path(str(facts["lib"])), nvcc_version=nvcc_version(home), compiler=compiler,
        compiler_version=compiler_line, compiler_major=compiler_major,
    )
    check(config, cell, tc)
    return tc
