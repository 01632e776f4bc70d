"""Consumers' environments three ways (the probe, by hand, known images) and the answers ``resolve`` gives them:
probe JSON round trip (the probe runs with ``python -I -S``: no site-packages, so it needs nothing but the standard
library), manual flags, the glibc floor read from the audit file beside a wheel, the pre-release torch refusal, a
torch too old for the GPU, the paste-able lines, and a printed ``--select`` that selects a cell of the real
build_matrix.toml."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wheelfarm import cli, environment
from wheelfarm.config import load
from wheelfarm.environment import from_probe, inspect_env, manual_env
from wheelfarm.index import Entry, build_pages
from wheelfarm.matrix import expand, select
from wheelfarm.resolve import MirrorView, against_matrix, decide

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


@pytest.mark.parametrize("text, why", [("not json", "not the probe's JSON"), ("[1, 2]", "no \"python\" key"),
                                       ('{"python": "3.12", "probe": 9}', "newer than this wheelfarm")])
def test_bad_probe_json_is_bad_input(text: str, why: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out = run_cli(["--index-url", str(write_mirror(tmp_path, [L28])), "--env", "-"], capsys)
    assert code == 2 and why in out


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
    assert view.glibc_floor(M24) == "2.32"
    env = manual_env(python="3.12", torch="2.11.0", cuda="13.0", cxx11abi="TRUE", glibc="2.31")
    d = decide(env, view.files, mirror=view.mirror, min_arch=80, glibc_floor=view.glibc_floor)
    assert not d.ok and "need a newer glibc than 2.31" in d.reasons[0]
    assert "its audit says it needs glibc 2.32" in d.nearest[0]
    newer = manual_env(python="3.12", torch="2.11.0", cuda="13.0", cxx11abi="TRUE", glibc="2.35")
    assert decide(newer, view.files, mirror=view.mirror, min_arch=80, glibc_floor=view.glibc_floor).wheel == M24


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
