"""Consumers' environments three ways (the probe, by hand, known images) and the answers ``resolve`` gives them:
probe JSON round trip (the probe runs with ``python -I -S``: no site-packages, so it needs nothing but the standard
library), manual flags, the glibc floor read from the audit file beside a wheel, the pre-release torch refusal, a
torch too old for the GPU, the paste-able lines, and a printed ``--select`` that selects a cell of the real
build_matrix.toml."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wheelfarm import cli, environment
from wheelfarm.config import load
from wheelfarm.environment import from_probe, inspect_env, manual_env
from wheelfarm.gpu_code import GpuCode
from wheelfarm.index import Entry, build_pages
from wheelfarm.matrix import expand, select
from wheelfarm.resolve import AuditFacts, MirrorView, against_matrix, decide

ROOT = Path(__file__).resolve().parents[1]
L28 = "flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
M24 = "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE-cp312-cp312-manylinux_2_24_x86_64.whl"


def write_mirror(root: Path, files: list[str], audits: dict[str, str] | None = None) -> Path:
    """Index pages for ``files`` (no wheel bytes: resolve reads names and audit files only), and the audit files
    ``{file: max_glibc}`` where publish puts them: ``wheels/<project>/<file>.audit.json``."""
    entries = [Entry(f, "flash-attn", "0" * 64, ">=3.9", f.split("-")[1].partition("+")[2], None) for f in files]
    for path, data in build_pages(entries).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    for file, glibc in (audits or {}).items():
        side = root / "wheels/flash-attn" / f"{file}.audit.json"
        side.parent.mkdir(parents=True, exist_ok=True)
        side.write_text(json.dumps({"passed": True, "glibc": {"max_glibc": glibc}}))
    return root


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["resolve", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


# ----------------------------------------------------------------------------------------------- the probe


def test_probe_runs_on_the_bare_standard_library_and_round_trips() -> None:
    out = subprocess.run([sys.executable, "-I", "-S", "-c", environment.probe_source()], capture_output=True,
                         text=True, check=True).stdout
    raw = json.loads(out)
    assert raw["probe"] == environment.PROBE_FORMAT
    assert raw["python"] == f"{sys.version_info.major}.{sys.version_info.minor}" and raw["torch"] is None
    env = from_probe(out, source="bare")
    assert (env.python, env.glibc, env.torch, env.source) == (raw["python"], raw["glibc"], None, "bare")
    here = inspect_env()  # the same file, run by resolve itself under this interpreter
    assert (here.python, here.glibc, here.machine) == (env.python, env.glibc, env.machine)


def test_probe_json_of_a_cuda_torch_environment() -> None:
    text = json.dumps({"probe": 1, "python": "3.12", "machine": "x86_64", "glibc": "2.35",
                       "torch": "2.6.0a0+ecf3bae40a.nv25.01", "cuda": "12.8", "cxx11abi": True, "gpu": [9, 0],
                       "gpu_name": "NVIDIA H100 80GB HBM3"})
    env = from_probe(text)
    assert (env.torch, env.torch_local, env.gpu, env.cuda, env.cxx11abi) == (
        "2.6.0a0", "ecf3bae40a.nv25.01", (9, 0), "12.8", True)
    assert env.prerelease


@pytest.mark.parametrize("text, why", [
    ("not json", "not the probe's JSON"), ("[1, 2]", "no \"python\" key"),
    ('{"python": "3.12", "probe": 9}', "newer than this wheelfarm"),
    ('{"python": "3.12", "probe": "x"}', "not a format number"),
    ('{"python": "3.12", "gpu": "9.0"}', "expected [major, minor]"),
    ('{"python": "3.12", "gpu": [9]}', "expected [major, minor]"),
    ('{"python": "3.12", "glibc": "2.35a-ubuntu"}', "'glibc' is '2.35a-ubuntu', expected X.Y"),
    ('{"python": "3.12", "cxx11abi": "TRUE"}', "expected true, false or null"),
    ('{"python": "3.12", "torch": "2.x"}', "not a PEP 440 version"),
    ('{"python": "3.12", "torch": null, "torch_error": "ImportError: libcudnn.so.9"}', "does not import"),
    ('{"python": "3.12", "machine": "riscv64"}', "builds for x86_64 and aarch64"),
])
def test_bad_probe_json_is_bad_input(text: str, why: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out = run_cli(["--index-url", str(write_mirror(tmp_path, [L28])), "--env", "-"], capsys)
    assert code == 2 and why in out


def test_the_probe_reads_a_cuda_torch_and_is_python_3_6_syntax(tmp_path: Path) -> None:
    """The torch branch, against a STAND-IN torch package (the facts a CUDA torch reports; no 2 GB download)."""
    ast.parse(environment.probe_source(), feature_version=(3, 6))
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "__version__ = '2.6.0a0+ecf3bae40a.nv25.01'\n"
        "class version: cuda = '12.8'\n"
        "class _C: _GLIBCXX_USE_CXX11_ABI = True\n"
        "class cuda:\n"
        "    is_available = staticmethod(lambda: True)\n"
        "    get_device_capability = staticmethod(lambda i: (9, 0))\n"
        "    get_device_name = staticmethod(lambda i: 'NVIDIA H100 80GB HBM3')\n")
    out = subprocess.run([sys.executable, "-S", "-c", environment.probe_source()], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    raw = json.loads(out)
    assert (raw["torch"], raw["cuda"], raw["cxx11abi"], raw["gpu"], raw["gpu_name"]) == (
        "2.6.0a0+ecf3bae40a.nv25.01", "12.8", True, [9, 0], "NVIDIA H100 80GB HBM3")
    (fake / "__init__.py").write_text("import libcudnn_missing\n")  # installed, but broken
    broken = json.loads(subprocess.run([sys.executable, "-S", "-c", environment.probe_source()], cwd=tmp_path,
                                       capture_output=True, text=True, check=True).stdout)
    assert broken["torch"] is None and "libcudnn_missing" in broken["torch_error"]


def test_a_python_that_is_not_one_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = str(write_mirror(tmp_path, [L28]))
    for exe in ("/bin/true", "/bin/false", str(tmp_path / "nope")):
        code, out = run_cli(["--index-url", mirror, "--python", exe], capsys)
        assert code == 2 and "--python" in out and "import json" not in out, out


# ------------------------------------------------------------------------------------------------ by hand


def test_by_hand_with_a_card_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = write_mirror(tmp_path, [L28, M24])
    code, out = run_cli(["--index-url", str(mirror), "--python", "3.12", "--torch", "2.8.0", "--cuda", "12.8",
                         "--glibc", "2.35", "--gpu", "L4", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["wheel"] == L28 and "GPU sm89" in doc["env"]
    assert doc["lines"]["pip"] == (f"pip install 'flash-attn==2.8.3.post2+cu12torch2.8cxx11abiTRUE' "
                                   f"--extra-index-url {mirror.as_uri()}/cu12torch2.8cxx11abiTRUE/simple/")


def test_by_hand_defaults_the_abi_like_pypi_torch() -> None:
    assert manual_env(python="3.11", torch="2.6.0", cuda="12.4", cxx11abi=None, glibc=None).cxx11abi is False
    assert manual_env(python="3.11", torch="2.7.1", cuda="12.8", cxx11abi=None, glibc=None).cxx11abi is True
    assert manual_env(python="3.11", torch="2.7.1", cuda="cpu", cxx11abi="false", glibc=None).cuda is None


@pytest.mark.parametrize("argv, why", [
    (["--torch", "2.8.0", "--cuda", "12.8"], "needs at least --python X.Y and --torch"),
    (["--python", "3.12", "--torch", "2.8.0"], "--torch without --cuda"),
    (["--python", "3.12", "--torch", "2.8.0", "--cuda", "12.8", "--cxx11abi", "maybe"], "expected TRUE or FALSE"),
    (["--python", "3.12", "--torch", "2.8.0", "--cuda", "twelve"], "--cuda 'twelve': expected X.Y"),
    (["--image", "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel", "--torch", "2.8.0"], "give the environment one way"),
])
def test_incomplete_or_malformed_manual_env_is_bad_input(argv: list[str], why: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["--index-url", str(write_mirror(tmp_path, [L28])), *argv], capsys)
    assert code == 2 and why in out


# ------------------------------------------------------------------------------------------- refusals


def test_glibc_floor_from_the_audit_file_refuses_a_too_old_image(tmp_path: Path) -> None:
    """The name says manylinux_2_24, the audit measured GLIBC 2.32: a glibc 2.31 image must not get it."""
    mirror = write_mirror(tmp_path, [M24], audits={M24: "2.32"})
    view = MirrorView(mirror.as_uri(), "flash-attn")
    facts = view.audit(M24)
    assert facts is not None and facts.glibc == "2.32"
    env = manual_env(python="3.12", torch="2.11.0", cuda="13.0", cxx11abi="TRUE", glibc="2.31")
    d = decide(env, view.files, mirror=view.mirror, min_arch=80, audit=view.audit)
    assert not d.ok and "do not fit what their audits measured" in d.reasons[0]
    assert "its audit says it needs glibc 2.32" in d.nearest[0]
    newer = manual_env(python="3.12", torch="2.11.0", cuda="13.0", cxx11abi="TRUE", glibc="2.35")
    assert decide(newer, view.files, mirror=view.mirror, min_arch=80, audit=view.audit).wheel == M24


def test_pre_release_torch_is_refused_with_a_build_against_that_torch(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fits = "flash_attn-2.8.3.post2+cu12torch2.6cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    code, out = run_cli(["--index-url", str(write_mirror(tmp_path, [fits])), "--python", "3.12",
                         "--torch", "2.6.0a0+ecf3bae40a", "--cuda", "12.8", "--cxx11abi", "TRUE", "--json"], capsys)
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and "pre-release build" in doc["reasons"][0]
    assert doc["nearest"][0].startswith(fits) and "at your own risk" in doc["nearest"][0]
    assert doc["build_command"].startswith("wheelfarm build --backend host --python")


def test_a_torch_too_old_for_the_gpu_is_refused_whatever_the_mirror_holds(tmp_path: Path) -> None:
    env = manual_env(python="3.12", torch="2.5.1", cuda="12.4", cxx11abi=None, glibc="2.35")
    d = decide(env.__class__(**{**env.__dict__, "gpu": (12, 0)}), [L28], min_arch=80)
    assert not d.ok and "sm120 needs CUDA 12.8 or newer" in d.reasons[0] and not d.nearest


def test_gpu_code_from_the_audit_decides_which_gpus_a_wheel_serves(tmp_path: Path) -> None:
    """A feature-stripped sm90-only variant (sm90lite: its name says nothing about archs) is never offered to an
    A100 or a B200; on an H100 it is offered, said to be a variant; a standard wheel's audit leaves out Thor
    (sm110)."""
    lite = L28.replace("cxx11abiTRUE", "cxx11abiTRUE.sm90lite")
    mirror = write_mirror(tmp_path, [lite], audits={lite: "2.17"})
    (mirror / "wheels/flash-attn" / f"{lite}.audit.json").write_text(json.dumps(
        {"passed": True, "glibc": {"max_glibc": "2.17"}, "archs": {"sass": ["sm_90"], "ptx": []}}))
    view = MirrorView(mirror.as_uri(), "flash-attn")
    env = manual_env(python="3.12", torch="2.8.0", cuda="12.8", cxx11abi="TRUE", glibc="2.35")
    for gpu in ((8, 0), (10, 0)):
        d = decide(dataclasses.replace(env, gpu=gpu), view.files, mirror=view.mirror, min_arch=80,
                   audit=view.audit)
        assert not d.ok and "GPU code for sm_90 only" in d.nearest[0]
    h100 = decide(dataclasses.replace(env, gpu=(9, 0)), view.files, mirror=view.mirror, min_arch=80,
                  audit=view.audit)
    assert h100.wheel == lite and any("variant build (sm90lite)" in n for n in h100.notes)
    std = AuditFacts("2.17", GpuCode(("sm_80", "sm_90", "sm_100", "sm_120"), ("compute_120",)))
    cu13 = manual_env(python="3.12", torch="2.11.0", cuda="13.0", cxx11abi="TRUE", glibc="2.35")
    thor = decide(dataclasses.replace(cu13, gpu=(11, 0)), [M24], min_arch=80, audit=lambda f: std)
    assert not thor.ok and "nothing runs on sm110" in thor.nearest[0]
    spark = manual_env(python="3.12", torch="2.8.0", cuda="12.9", cxx11abi="TRUE", glibc="2.35")
    rtx = decide(dataclasses.replace(spark, gpu=(12, 1)), [L28], min_arch=80, audit=lambda f: std)
    assert rtx.ok  # sm_120 SASS runs on 12.1


def test_a_wheel_without_an_audit_is_offered_with_a_note(tmp_path: Path) -> None:
    mirror = write_mirror(tmp_path, [L28])
    view = MirrorView(mirror.as_uri(), "flash-attn")
    env = manual_env(python="3.12", torch="2.8.0", cuda="12.8", cxx11abi="TRUE", glibc="2.17")
    d = decide(env, view.files, mirror=view.mirror, min_arch=80, audit=view.audit)
    assert d.ok and any("has no audit result" in n for n in d.notes)


def test_nightly_torch_through_the_cli_is_a_pre_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["--index-url", str(write_mirror(tmp_path, [L28])), "--python", "3.12", "--torch",
                         "2.10.0.dev20251001+cu128", "--cuda", "12.8"], capsys)
    assert code == 1 and "torch 2.10.0.dev20251001+cu128 is a pre-release build" in out


def test_another_build_of_the_same_cuda_major_fits_and_the_2_6_3_select_picks_its_cell(tmp_path: Path) -> None:
    """flash-attn 2.6.3 spells major+minor: the farm's cu126 build serves a torch 2.4.1+cu124 (CUDA minor-version
    compatibility, as upstream's one cu123 build does), and `build it` names the matrix's one 2.6.3 cell."""
    farm = "flash_attn-2.6.3+cu126torch2.4cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"
    env = manual_env(python="3.11", torch="2.4.1", cuda="12.4", cxx11abi="FALSE", glibc="2.35")
    assert decide(env, [farm], min_arch=80).wheel == farm
    other = manual_env(python="3.10", torch="2.4.1", cuda="12.4", cxx11abi="FALSE", glibc="2.35")
    d = against_matrix(decide(other, [farm], min_arch=80), other, "flash-attn", ROOT / "build_matrix.toml")
    (cell,) = select(expand(load(ROOT / "build_matrix.toml")), d.select)
    assert cell.wheel == farm.replace("cp311", "cp310"), cell.wheel


def test_the_pre_release_build_command_names_this_cuda(tmp_path: Path) -> None:
    env = manual_env(python="3.12", torch="2.6.0a0+ecf3bae40a", cuda="12.8", cxx11abi="TRUE", glibc="2.39")
    d = decide(env, [], min_arch=80)
    assert d.build_command and '--cuda-home "${CUDA_HOME:-/usr/local/cuda}"' in d.build_command
    assert "pip install -e '.[farm]'" in d.build_command


# ---------------------------------------------------------------------------------- answers and builds


def test_every_paste_able_form_pins_the_whole_version(tmp_path: Path) -> None:
    env = manual_env(python="3.12", torch="2.8.0", cuda="12.8", cxx11abi="TRUE", glibc="2.35")
    d = decide(env, [L28], mirror="https://wheels.example", min_arch=80)
    index = "https://wheels.example/cu12torch2.8cxx11abiTRUE/simple/"
    pin = "flash-attn==2.8.3.post2+cu12torch2.8cxx11abiTRUE"
    assert d.lines == {
        "pip": f"pip install '{pin}' --extra-index-url {index}",
        "uv": f"uv pip install '{pin}' --extra-index-url {index}",
        "requirements.txt": f"--extra-index-url {index}\n{pin}",
        "Dockerfile": f"RUN pip install --no-cache-dir '{pin}' --extra-index-url {index}",
        "pip (env)": f"PIP_EXTRA_INDEX_URL={index} pip install '{pin}'",
        "uv (env)": f"UV_INDEX={index} uv pip install '{pin}'",
    }


def test_the_printed_select_selects_the_one_cell_of_the_real_matrix() -> None:
    """`build it` must name the one cell of build_matrix.toml that makes the wheel this environment needs."""
    env = manual_env(python="3.12", torch="2.8.0", cuda="12.8", cxx11abi="TRUE", glibc="2.35")
    d = decide(env, [L28.replace("cp312", "cp311")], min_arch=80)
    assert not d.ok and d.build_command == f"nox -s build -- --select {' '.join(d.select)}"
    (cell,) = select(expand(load(ROOT / "build_matrix.toml")), d.select)
    assert cell.wheel == L28 and cell.variant == ""


def test_with_no_wheel_on_the_mirror_the_matrix_names_the_version(tmp_path: Path) -> None:
    env = manual_env(python="3.12", torch="2.8.0", cuda="12.8", cxx11abi="TRUE", glibc="2.35")
    bare = decide(env, [], min_arch=80)
    assert not any(s.startswith("version=") for s in bare.select)
    d = against_matrix(bare, env, "flash-attn", ROOT / "build_matrix.toml")
    (cell,) = select(expand(load(ROOT / "build_matrix.toml")), d.select)
    assert cell.wheel == L28 and d.build_command == f"nox -s build -- --select {' '.join(d.select)}"


def test_a_select_with_no_cell_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["--index-url", str(write_mirror(tmp_path, [L28])), "--python", "3.13", "--torch", "2.3.1",
                         "--cuda", "12.1", "--matrix", str(ROOT / "build_matrix.toml")], capsys)
    assert code == 1 and "build_matrix.toml has no such cell yet" in out


def test_list_images_prints_every_row_with_its_facts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["--list-images"], capsys)
    rows = environment.images()
    assert code == 0 and len(rows) > 100
    for name in ("nvcr.io/nvidia/pytorch:25.12-py3", "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel"):
        assert name in out
    assert out.count("\n    python ") == len(rows)
