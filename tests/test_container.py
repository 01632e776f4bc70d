"""wheelfarm.container: command lines per engine, engine detection, cgroup limits.

`container` tests need podman and the offline test image (scripts/build-test-image.sh builds or loads it;
WHEELFARM_TEST_IMAGE names another image)."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from farmtest import need
from wheelfarm import container
from wheelfarm.container import Engine, Mount, detect_engine, memory_limit_bytes
from wheelfarm.errors import BadInput

REPO = Path(__file__).resolve().parent.parent
PODMAN = Engine("podman", "/usr/bin/podman", runtime="runc")
DOCKER = Engine("docker", "/usr/bin/docker")

# ------------------------------------------------------------------------------------------ command lines


def test_podman_run_args_carry_the_quirks():
    args = PODMAN.run_args("img:1", ["true"])
    assert args == [
        "/usr/bin/podman", "run", "--rm", "--pull=never",
        "--runtime=runc", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
        "img:1", "true",
    ]  # fmt: skip


def test_podman_without_runc_keeps_its_default_runtime():
    args = Engine("podman", "podman").run_args("img", ["true"])
    assert not any(a.startswith("--runtime") for a in args)
    assert "--ulimit=nofile=1024:1024" in args


def test_docker_run_args_have_no_podman_quirks():
    assert DOCKER.run_args("img:1", ["true"]) == [
        "/usr/bin/docker",
        "run",
        "--rm",
        "--pull=never",
        "img:1",
        "true",
    ]


@pytest.mark.parametrize("engine", [PODMAN, DOCKER], ids=["podman", "docker"])
def test_run_args_options(engine):
    mounts = [Mount(Path("/src"), "/project", read_only=True), Mount(Path("/cache"), "/cache")]
    args = engine.run_args(
        "img",
        ["bash", "-c", "echo hi"],
        mounts=mounts,
        env={"MAX_JOBS": "2", "AWS_SECRET": "s3cr3t"},
        workdir="/project",
        memory="8g",
        cpus=1.5,
        name="job-1",
    )
    tail = args[args.index("--name=job-1") :]
    assert tail == [
        "--name=job-1",
        "--volume=/src:/project:ro", "--volume=/cache:/cache",
        "--env=AWS_SECRET", "--env=MAX_JOBS",
        "--workdir=/project",
        "--memory=8g", "--memory-swap=8g",
        "--cpus=1.5",
        "img", "bash", "-c", "echo hi",
    ]  # fmt: skip
    assert not any("s3cr3t" in a for a in args)  # values travel in the environment, not the command line


def test_run_passes_env_values_to_the_engine_process(monkeypatch):
    seen = {}

    def fake_run(cmd, *, env=None, **kw):
        seen.update(cmd=cmd, env=env, **kw)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(container.proc, "run", fake_run)
    PODMAN.run("img", ["true"], env={"TOKEN": "x"}, capture=True)
    assert seen["env"] == {"TOKEN": "x"}
    assert "--env=TOKEN" in seen["cmd"]
    assert seen["capture"] is True


def test_mount_with_colon_is_bad_input():
    with pytest.raises(BadInput):
        Mount(Path("/a:b"), "/x").arg()


def test_load_and_save_pipe_through_gzip():
    load = PODMAN.load_args(Path("/c/img.tar.gz"))
    assert load[:3] == ["bash", "-o", "pipefail"]
    assert "zcat -f" in load[4] and "load" in load[4]
    assert load[5:] == ["/c/img.tar.gz", "/usr/bin/podman"]
    save = DOCKER.save_args("img:1", Path("/c/img.tar.gz"))
    assert "gzip" in save[4] and save[5:] == ["/c/img.tar.gz", "/usr/bin/docker", "img:1"]


def test_load_of_a_missing_archive_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no image archive"):
        PODMAN.load(tmp_path / "missing.tar.gz")


# -------------------------------------------------------------------------------------------- detection


def _fake_tools(monkeypatch, found: dict[str, str], docker_daemon: bool = False):
    monkeypatch.setattr(container.shutil, "which", lambda name: found.get(name))

    def fake_run(cmd, **kw):
        assert cmd[1] == "version", cmd
        return subprocess.CompletedProcess(cmd, 0 if docker_daemon else 1, "", "")

    monkeypatch.setattr(container.proc, "run", fake_run)


def test_no_engine_is_bad_input_with_hint(monkeypatch):
    _fake_tools(monkeypatch, {})
    with pytest.raises(BadInput) as err:
        detect_engine(None)
    assert err.value.exit_code == 2
    assert str(err.value) == (
        "no container engine found (podman or docker)\n"
        "  hint: install one with scripts/setup-podman.sh or use --backend host"
    )


def test_docker_cli_without_daemon_is_not_an_engine(monkeypatch):
    _fake_tools(monkeypatch, {"docker": "/usr/local/bin/docker"}, docker_daemon=False)
    with pytest.raises(BadInput, match="no container engine found"):
        detect_engine("auto")


def test_auto_prefers_podman(monkeypatch):
    _fake_tools(monkeypatch, {"podman": "/usr/bin/podman", "runc": "/usr/sbin/runc", "docker": "/d"}, True)
    assert detect_engine(None) == Engine("podman", "/usr/bin/podman", "runc")


def test_auto_falls_back_to_docker_with_a_daemon(monkeypatch):
    _fake_tools(monkeypatch, {"docker": "/usr/bin/docker"}, docker_daemon=True)
    assert detect_engine(None) == Engine("docker", "/usr/bin/docker")


def test_preferred_engine_missing(monkeypatch):
    _fake_tools(monkeypatch, {"podman": "/usr/bin/podman"})
    with pytest.raises(BadInput, match="docker is not usable") as err:
        detect_engine("docker")
    assert "scripts/setup-podman.sh" in str(err.value)


def test_unknown_engine_name():
    with pytest.raises(BadInput, match="unknown container engine 'lxc'"):
        detect_engine("lxc")


# ------------------------------------------------------------------------------------------------ cgroups


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "0::/\n")
    _write(tmp_path, "sys/fs/cgroup/memory.max", "8589934592\n")
    assert memory_limit_bytes(tmp_path) == 8 * 2**30


def test_cgroup_v2_max_is_unlimited(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "0::/\n")
    _write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    assert memory_limit_bytes(tmp_path) is None


def test_cgroup_v2_nested_cgroup_on_a_host(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "0::/system.slice/runner.service\n")
    _write(tmp_path, "sys/fs/cgroup/system.slice/runner.service/memory.max", "4294967296\n")
    assert memory_limit_bytes(tmp_path) == 4 * 2**30


def test_cgroup_v1_limit(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "2147483648\n")
    assert memory_limit_bytes(tmp_path) == 2 * 2**30


def test_cgroup_v1_unlimited(tmp_path):
    _write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    assert memory_limit_bytes(tmp_path) is None


def test_no_cgroup_files(tmp_path):
    assert memory_limit_bytes(tmp_path) is None


# --------------------------------------------------------------------- in the offline test image (podman)


@pytest.fixture(scope="module")
def image() -> str:
    need(shutil.which("podman"), "podman not installed (scripts/setup-podman.sh)")
    ref = os.environ.get("WHEELFARM_TEST_IMAGE")
    if ref:
        return ref
    # Present or cached: seconds. A cold build (~15 min) only when asked for: WHEELFARM_BUILD_TEST_IMAGE=1.
    cold = os.environ.get("WHEELFARM_BUILD_TEST_IMAGE") == "1"
    env = {**os.environ, "WHEELFARM_NO_COLD_BUILD": "0" if cold else "1"}
    out = subprocess.run([REPO / "scripts/build-test-image.sh"], capture_output=True, text=True, env=env)
    need(out.returncode != 3,
         "no offline test image: run scripts/build-test-image.sh (or WHEELFARM_BUILD_TEST_IMAGE=1)")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return detect_engine("podman")


def _sh(engine: Engine, image: str, script: str, **kw) -> str:
    return engine.run(image, ["bash", "-euc", script], capture=True, **kw).stdout


@pytest.mark.container
def test_save_load_round_trip(engine, tmp_path):
    tiny = "localhost/wheelfarm-test-tiny:1"
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs/hello").write_text("hi\n")
    tar = subprocess.run(
        ["tar", "-C", tmp_path / "rootfs", "-c", "."], capture_output=True, check=True
    ).stdout
    subprocess.run([engine.executable, "import", "-", tiny], input=tar, capture_output=True, check=True)
    archive = tmp_path / "tiny.tar.gz"
    try:
        engine.save(tiny, archive)
        assert archive.stat().st_size > 0 and not archive.with_name("tiny.tar.gz.part").exists()
        subprocess.run([engine.executable, "rmi", tiny], capture_output=True, check=True)
        assert not engine.image_exists(tiny)
        engine.load(archive)
        assert engine.image_exists(tiny)
    finally:
        subprocess.run([engine.executable, "rmi", "-f", tiny], capture_output=True)


@pytest.mark.container
def test_image_glibc_is_2_31(engine, image):
    assert "2.31" in _sh(engine, image, "ldd --version").splitlines()[0]


@pytest.mark.container
def test_image_pythons_and_pip(engine, image):
    script = """
        py=/opt/python/cp311-cp311/bin/python
        $py -c 'import sys, ssl, sqlite3, lzma, bz2, ctypes, zlib; print(sys.version_info[:2])'
        /opt/python/cp311-cp311/bin/pip --version
        /opt/python/cp39-cp39/bin/python --version
        auditwheel --version
    """
    out = _sh(engine, image, script)
    assert "(3, 11)" in out
    assert "pip " in out and "python 3.11" in out
    assert "Python 3.9" in out
    assert "auditwheel" in out


@pytest.mark.container
def test_image_clang_compiles_cxx20(engine, image, tmp_path):
    (tmp_path / "t.cpp").write_text(
        textwrap.dedent("""\
        #include <concepts>
        #include <span>
        template <std::integral T> T twice(T x) { return 2 * x; }
        int main() { int a[] = {1, 2}; std::span<int> s(a); return twice(s[0]) == 2 ? 0 : 1; }
        """)
    )
    mounts = [Mount(tmp_path, "/w")]
    _sh(engine, image, "clang++ -std=c++20 -O1 /w/t.cpp -o /w/t && /w/t", mounts=mounts)


@pytest.mark.container
def test_memory_limit_inside_a_container(engine, image):
    source = "\n".join(
        inspect.getsource(f)
        for f in (
            container._parse_limit,
            container._read,
            container._own_cgroups,
            container.memory_limit_bytes,
        )
    )
    script = f"from pathlib import Path\nUNLIMITED_V1 = 2**60\n{source}\nprint(memory_limit_bytes())\n"
    out = engine.run(
        image, ["/opt/python/cp311-cp311/bin/python", "-c", script], memory="1g", capture=True
    ).stdout
    assert out.strip() == str(2**30)


# ------------------------------------------------------------------- recipes, pins and their scripts (pure)


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PINS = tomllib.loads((REPO / "containers/pins.toml").read_text())


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_containerfile_from_matches_pins(arch):
    text = (REPO / f"containers/Containerfile.manylinux_2_28_{arch}").read_text()
    pin = PINS["image"][arch]
    assert f"FROM {pin['name']}@{pin['digest']}\n" in text
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin["digest"])
    assert f"# pinned: {pin['name']}:{pin['tag']} (" in text


@pytest.mark.parametrize("cuda", sorted(PINS["cuda"]))
def test_cuda_pins_are_exact_and_complete(cuda):
    table = PINS["cuda"][cuda]
    assert table["source"] in ("pypi", "rpm")
    assert any("nvcc" in name for name in table["versions"])
    for arch in ("x86_64", "aarch64") if table["source"] == "pypi" else ():
        assert set(table["sha256"][arch]) == set(table["versions"])
    for name, version in table.get("rpms", {}).items():
        assert name.endswith(cuda.replace(".", "-")) and version.endswith("-1")


def _matrix_cudas() -> dict[str, object]:
    from wheelfarm.config import load
    from wheelfarm.matrix import expand

    config = load(REPO / "build_matrix.toml")
    return {c.cuda: config.cuda[c.cuda] for c in expand(config)}


@pytest.mark.parametrize("cuda", sorted(_matrix_cudas()))
def test_every_matrix_cuda_has_an_image_recipe_pin(cuda):
    """The container path of every cell: a pins.toml table per CUDA of the matrix; CUDA 12 (no nvcc on PyPI,
    nvcc-in-wheels = false in build_matrix.toml) from NVIDIA's RHEL 8 RPMs of the same nvcc the toml pins."""
    facts = _matrix_cudas()[cuda]
    table = PINS["cuda"].get(cuda)
    assert table is not None, f"CUDA {cuda} is in the matrix but not in containers/pins.toml"
    assert table["source"] == ("pypi" if facts.nvcc_in_wheels else "rpm")
    nvcc = next(p for p in facts.toolkit if p.startswith("nvidia-cuda-nvcc"))
    name, version = nvcc.split("==")
    assert table["versions"][name] == version  # the recipe's toolkit is the one the toml names
    if table["source"] == "rpm":
        assert table["rpms"][f"cuda-nvcc-{cuda.replace('.', '-')}"] == f"{version}-1"
        assert table["toolkit"].startswith(f"{cuda}.")


def test_install_cuda_refuses_a_cuda_12_from_wheels(tmp_path):
    install_cuda = _load_script(REPO / "containers/install-cuda.py")
    assert (install_cuda.source_for("12.9"), install_cuda.source_for("13.0")) == ("rpm", "pypi")
    assert install_cuda.cuda_table(PINS, "12.8")["source"] == "rpm"
    wrong = {"cuda": {"12.9": {**PINS["cuda"]["12.8"], "source": "pypi"}}}
    with pytest.raises(SystemExit, match=r"CUDA 12\.9 must come from source = 'rpm'.*no nvcc driver"):
        install_cuda.cuda_table(wrong, "12.9")
    with pytest.raises(SystemExit, match=r"CUDA '12\.5' is not pinned.*update-pins"):
        install_cuda.cuda_table(PINS, "12.5")


def test_a_host_build_without_a_cuda_12_toolkit_is_refused_first(tmp_path, capsys):
    """On a host, a CUDA 12 cell needs --cuda-home (PyPI has no nvcc 12): exit 2 before any download or folder."""
    from wheelfarm.cli import main

    work, house = tmp_path / "work", tmp_path / "house"
    args = ["build", "--backend", "host", "--work-dir", str(work), "--wheelhouse", str(house),
            "--matrix", str(REPO / "build_matrix.toml"), "--select", "version=2.7.4.post1", "torch=2.8",
            "python=3.12", f"platform=linux_{os.uname().machine}"]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "1 selected cell(s) build with CUDA 12.9" in err and "carry no nvcc" in err
    assert "--cuda-home /usr/local/cuda-12.9" in err and f"manylinux_2_28_{os.uname().machine}-cuda12.9" in err
    assert not work.exists() and not house.exists()
    other = "linux_aarch64" if os.uname().machine == "x86_64" else "linux_x86_64"
    assert main([*args[:-1], f"platform={other}", "--cuda-home", str(tmp_path)]) == 2
    assert f"this host builds linux_{os.uname().machine} wheels only" in " ".join(capsys.readouterr().err.split())


def test_install_cuda_requirements_are_hashed():
    install_cuda = _load_script(REPO / "containers/install-cuda.py")
    table = install_cuda.cuda_table(PINS, "13.0")
    lines = install_cuda.requirements(table, "x86_64").splitlines()
    assert len(lines) == len(table["versions"])
    assert all(re.fullmatch(r"[\w-]+==[\d.]+ --hash=sha256:[0-9a-f]{64}", line) for line in lines)


def test_install_cuda_merges_component_trees_and_links(tmp_path):
    install_cuda = _load_script(REPO / "containers/install-cuda.py")
    staging, prefix = tmp_path / "site", tmp_path / "cuda"
    files = ["cuda_runtime/lib/libcudart.so.12", "cuda_runtime/include/cuda_runtime.h", "cuda_nvcc/bin/nvcc",
             "cu13/lib/libnvrtc.so.13.0"]  # fmt: skip
    for rel in files:
        _write(staging, f"nvidia/{rel}", "x")
    _write(staging, "nvidia/cuda_nvcc/__init__.py", "")
    install_cuda.merge(staging, prefix)
    install_cuda.add_links(prefix)
    assert (prefix / "bin/nvcc").is_file() and (prefix / "include/cuda_runtime.h").is_file()
    assert not (prefix / "__init__.py").exists()
    assert (prefix / "lib64").resolve() == (prefix / "lib").resolve()
    assert os.readlink(prefix / "lib/libcudart.so") == "libcudart.so.12"
    assert not (prefix / "lib/libnvrtc.so").exists()  # only libX.so.<major> gets an unversioned link


def test_update_pins_reads_cibuildwheel_pins(tmp_path):
    update_pins = _load_script(REPO / "scripts/update-pins.py")
    cfg = tmp_path / "pinned_docker_images.cfg"
    cfg.write_text(
        "[x86_64]\nmanylinux2014 = quay.io/pypa/manylinux2014_x86_64@sha256:aa  # 2026.08.15-1\n"
        "manylinux_2_28 = quay.io/pypa/manylinux_2_28_x86_64@sha256:bb  # 2026.08.15-1\n"
        "[aarch64]\nmanylinux_2_28 = quay.io/pypa/manylinux_2_28_aarch64@sha256:cc  # 2026.08.15-1\n"
    )
    found = update_pins.cibuildwheel_images(cfg, "cibuildwheel@abc")
    assert found["x86_64"] == {
        "name": "quay.io/pypa/manylinux_2_28_x86_64",
        "digest": "sha256:bb",
        "tag": "2026.08.15-1",
        "source": "cibuildwheel@abc",
    }
    assert found["aarch64"]["digest"] == "sha256:cc"


def test_update_pins_render_round_trips():
    update_pins = _load_script(REPO / "scripts/update-pins.py")
    text = update_pins.render(PINS["image"], PINS["cuda"], PINS["tools"])
    assert tomllib.loads(text) == PINS
