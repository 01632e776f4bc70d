"""GPU test decisions and plumbing, without a GPU: refusals, env plan, junit counting, result file, CLI.

The end-to-end test at the bottom runs the real check script against a CPU stand-in of flash-attn; it needs a
Python with torch (``farmtest.torch_python``: ``WHEELFARM_TORCH_PYTHON``, this one, or the fixture's managed venv).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from farmtest import torch_python
from wheelfarm import cli, gputest
from wheelfarm.errors import BadInput
from wheelfarm.gpu_checks import upstream_conftest
from wheelfarm.gputest import Gpu, PythonInfo, WheelArchs

FA = gputest.BUILTIN_RULES["flash-attn"]
H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0), "580.65.06")
A100 = Gpu("NVIDIA A100-SXM4-80GB", (8, 0), "550.54.15")
A10 = Gpu("NVIDIA A10", (8, 6), "550.54.15")
T4 = Gpu("Tesla T4", (7, 5), "535.104.05")
V100 = Gpu("Tesla V100-SXM2-16GB", (7, 0), "535.104.05")
B200 = Gpu("NVIDIA B200", (10, 0), "580.65.06")
WHEEL = "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"


def archs(sass=(), ptx=()) -> WheelArchs:
    return WheelArchs(tuple(sass), tuple(ptx))


# ----------------------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("gpu", "wheel_archs", "require", "action", "words"),
    [
        (None, None, False, "skip", ["no CUDA GPU found: skipping GPU tests"]),
        (None, None, True, "refuse", ["no CUDA GPU found", "--require-gpu"]),
        (
            T4,
            archs(["90"]),
            False,
            "skip",
            ["unsupported GPU: flash-attn 2 needs Ampere (sm80) or newer", "sm75"],
        ),
        (
            T4,
            archs(["90"]),
            True,
            "refuse",
            ["unsupported GPU: flash-attn 2 needs Ampere (sm80) or newer", "sm75"],
        ),
        (V100, None, False, "skip", ["unsupported GPU", "Tesla V100", "sm70"]),
        (V100, None, True, "refuse", ["unsupported GPU", "sm70", "--require-gpu"]),
        (A100, archs(["80", "90"]), True, "run", ["SASS sm_80"]),
        (A100, None, False, "run", ["archs were not checked"]),
        (A10, archs(["80"]), False, "run", ["sm86", "SASS sm_80"]),  # sm80 SASS runs on 8.6
        (H100, archs(["90"]), True, "run", ["SASS sm_90"]),
        (H100, archs(["80"]), False, "refuse", ["sm_80", "NVIDIA H100", "sm90", "no usable PTX", "rebuild"]),
        (H100, archs(["80"]), True, "refuse", ["sm_80", "sm90"]),
        (H100, archs(["80"], ["80"]), False, "run", ["PTX compute_80", "JIT"]),
        (H100, archs(["90a"]), False, "run", ["sm_90a"]),
        (B200, archs(["90a"], ["90a"]), False, "refuse", ["sm_90a", "sm100"]),  # arch-specific: exact cc only
        (B200, archs(["80", "90"], ["90"]), False, "run", ["compute_90"]),
        (Gpu("RTX 5090", (12, 0)), archs(["100f"]), False, "refuse", ["sm_100f"]),
        (Gpu("B300", (10, 3)), archs(["100f"]), False, "run", ["sm_100f"]),
    ],
)
def test_decide(gpu, wheel_archs, require, action, words):
    decision = gputest.decide(gpu, wheel_archs, FA, require_gpu=require, wheel=WHEEL)
    assert decision.action == action, decision.message
    assert decision.exit_code == (1 if action == "refuse" else 0)
    for word in words:
        assert word in decision.message


def test_decide_without_package_rules_only_checks_archs():
    other = gputest.Rules("fixture-attn")
    assert gputest.decide(T4, archs(["75"]), other, require_gpu=True).action == "run"


@pytest.mark.parametrize(
    ("entry", "normal"),
    [
        ("sm_90", "90"),
        ("sm90", "90"),
        ("90", "90"),
        ("compute_90", "90"),
        ("sm_90a", "90a"),
        ("SM_100F", "100f"),
        ("9.0", "90"),
        ("sm_120", "120"),
    ],
)
def test_normalize_arch(entry, normal):
    assert gputest.normalize_arch(entry) == normal


@pytest.mark.parametrize("bad", ["sm_9", "hopper", "", "sm_90x"])
def test_normalize_arch_rejects(bad):
    with pytest.raises(ValueError, match="not a CUDA arch"):
        gputest.normalize_arch(bad)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"archs": {"sass": ["sm_80", "sm_90"], "ptx": []}}, archs(["80", "90"])),  # docs/audit.md
        ({"archs": {"sass": ["sm_90a"], "ptx": ["compute_90a"]}}, archs(["90a"], ["90a"])),
        ({"sass": ["sm_90"], "ptx": ["compute_90"]}, archs(["90"], ["90"])),
        ({"archs": ["sm_80", "compute_80"]}, archs(["80"], ["80"])),
        ({"passed": True}, None),
        ({"archs": None}, None),
    ],
)
def test_archs_from_audit(data, expected):
    assert gputest.archs_from_audit(data) == expected


def test_archs_from_audit_names_the_bad_value():
    with pytest.raises(BadInput, match=r"x\.audit\.json: key 'archs':.*'hopper'"):
        gputest.archs_from_audit({"archs": {"sass": ["hopper"]}}, "x.audit.json")


def test_load_audit_archs(tmp_path):
    wheel = tmp_path / WHEEL
    assert gputest.load_audit_archs(wheel) is None
    Path(f"{wheel}.audit.json").write_text(json.dumps({"schema": 1, "archs": {"sass": ["sm_90"], "ptx": []}}))
    assert gputest.load_audit_archs(wheel) == archs(["90"])
    Path(f"{wheel}.audit.json").write_text("{not json")
    with pytest.raises(BadInput, match="not readable JSON"):
        gputest.load_audit_archs(wheel)


# ----------------------------------------------------------------------------------------- probe


def test_parse_nvidia_smi():
    text = "NVIDIA H100 80GB HBM3, 9.0, 580.65.06\nTesla T4, 7.5, 535.104.05\ngarbage\nX, [N/A], 1\n"
    assert gputest.parse_nvidia_smi(text) == [
        Gpu("NVIDIA H100 80GB HBM3", (9, 0), "580.65.06"),
        Gpu("Tesla T4", (7, 5), "535.104.05"),
    ]
    assert gputest.parse_nvidia_smi("") == []


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", ""), ("-1", ""), ("1,0", "1"), ("GPU-5d1c", "GPU-5d1c")]
)
def test_visible_device(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert gputest.visible_device() == expected


def test_probe_gpu_hidden_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(gputest, "_nvidia_smi", lambda device: pytest.fail("must not probe"))
    assert gputest.probe_gpu(sys.executable) is None


def test_probe_gpu_falls_back_to_torch(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gputest, "_nvidia_smi", lambda device: None)
    info = PythonInfo("3.12.3", "2.11.0+cu130", "13.0", True, Gpu("NVIDIA H100", (9, 0), None, "torch"))
    monkeypatch.setattr(gputest, "probe_python", lambda python: info)
    assert gputest.probe_gpu("python3") == info.gpu


def test_probe_python_of_a_python_without_torch(tmp_path):
    gputest.probe_python.cache_clear()
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages, so no torch
    fake.chmod(0o755)
    info = gputest.probe_python(str(fake))
    assert info is not None and info.torch is None and info.gpu is None
    assert gputest.probe_python(str(tmp_path / "missing")) is None


# ----------------------------------------------------------------------------------------- wheel & env plan


def test_describe_wheel():
    info = gputest.describe_wheel(Path("wheelhouse") / WHEEL)
    assert (info.project, info.torch, info.cuda_major, info.cxx11abi) == ("flash-attn", "2.11", "13", True)
    old = gputest.describe_wheel(
        Path("flash_attn-2.6.3+cu118torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl")
    )
    assert (old.torch, old.cuda_major, old.cxx11abi) == ("2.4", "11", False)
    plain = gputest.describe_wheel(Path("fixture_attn-0.1.0-cp311-cp311-linux_x86_64.whl"))
    assert (plain.project, plain.torch, plain.cuda_major, plain.cxx11abi) == (
        "fixture-attn",
        None,
        None,
        None,
    )
    with pytest.raises(BadInput, match="not a wheel file name"):
        gputest.describe_wheel(Path("dummy.whl"))


RUNNER = PythonInfo("3.12.3", "2.11.0+cu130", "13.0", True, None)


@pytest.mark.parametrize(
    ("runner", "reuse", "mode", "words"),
    [
        (RUNNER, True, gputest.ENV_REUSED, ["2.11.0+cu130 (CUDA 13.0) matches", "runner's site-packages"]),
        (RUNNER, False, gputest.ENV_FRESH, ["fresh venv", "--reuse-env"]),
        (
            PythonInfo("3.12.3", "2.10.1+cu130", "13.0", True, None),
            True,
            gputest.ENV_FRESH,
            ["torch 2.10 != 2.11"],
        ),
        (
            PythonInfo("3.12.3", "2.11.0+cu128", "12.8", True, None),
            True,
            gputest.ENV_FRESH,
            ["CUDA 12.8 is not CUDA 13"],
        ),
        (PythonInfo("3.12.3", "2.11.0+cpu", None, True, None), True, gputest.ENV_FRESH, ["CPU build"]),
        (
            PythonInfo("3.12.3", "2.11.0+cu130", "13.0", False, None),
            True,
            gputest.ENV_FRESH,
            ["cxx11abi FALSE != TRUE"],
        ),
        (PythonInfo("3.12.3", None, None, None, None), True, gputest.ENV_FRESH, ["has no torch"]),
        (None, True, gputest.ENV_FRESH, ["has no torch"]),
    ],
)
def test_plan_env(runner, reuse, mode, words):
    plan = gputest.plan_env(gputest.describe_wheel(Path(WHEEL)), runner, reuse=reuse)
    assert plan.mode == mode
    for word in words:
        assert word in plan.reason
    assert plan.torch_requirement == (None if mode == gputest.ENV_REUSED else "torch==2.11.*")


def test_plan_env_installed():
    plan = gputest.plan_env(gputest.describe_wheel(Path(WHEEL)), None, reuse=True, installed=True)
    assert plan.mode == gputest.ENV_INSTALLED


def test_requirements():
    declared = ["torch==2.11.*", "einops", "ninja; python_version < '3'", "packaging[extra]>=20"]
    assert gputest.requirements(declared, ["einops>=0.6", "Torch"], upstream=True) == [
        "einops",
        "packaging[extra]>=20",
        "pytest",
    ]
    assert gputest.requirements([], [], upstream=False) == []
    with pytest.raises(BadInput, match="not valid"):
        gputest.requirements(["einops ==="], [], upstream=False)


def test_wheel_requires(tmp_path):
    wheel = _wheel(tmp_path, WHEEL, {"flash_attn/__init__.py": ""}, requires=["torch==2.11.*", "einops"])
    assert gputest.wheel_requires(wheel) == ["torch==2.11.*", "einops"]


def test_pip_source_args():
    assert gputest.pip_source_args([], None) == []
    assert gputest.pip_source_args([Path(".whl")], None) == ["--find-links", ".whl", "--no-index"]
    assert gputest.pip_source_args([Path("a")], "https://x/simple") == [
        "--find-links",
        "a",
        "--index-url",
        "https://x/simple",
    ]


def test_rules_from_config(tmp_path):
    config = Path(__file__).parents[1] / "build_matrix.toml"
    if not config.is_file():
        pytest.skip("no build_matrix.toml in this checkout")
    rules = gputest.rules_for("flash-attn", config)
    assert rules.min_capability == (8, 0) and rules.checks == "flash_attn" and "einops" in rules.requires
    assert rules.needs == FA.needs
    assert gputest.rules_for("no-such-package", config) == gputest.Rules("no-such-package")


# ----------------------------------------------------------------------------------------- counting


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests">
<testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6" time="1.0">
<testcase classname="test_flash_attn" name="test_a[1]" time="0.1"/>
<testcase classname="test_flash_attn" name="test_a[2]" time="0.1"/>
<testcase classname="test_flash_attn" name="test_b" time="0.1">
  <failure message="assert 3 &lt;= 2">tb</failure>
</testcase>
<testcase classname="test_flash_attn" name="test_c" time="0.1">
  <skipped type="pytest.skip" message="OOM">s</skipped>
</testcase>
<testcase classname="test_flash_attn" name="test_d" time="0.0"><skipped type="pytest.xfail"/></testcase>
<testcase classname="test_flash_attn" name="test_e" time="0.1"><error message="fixture">e</error></testcase>
<testcase time="0.000" />
</testsuite>
</testsuites>
"""


def test_count_junit(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = gputest.count_junit(path)
    assert (counts.passed, counts.failed, counts.skipped, counts.errors) == (2, 1, 2, 1)
    assert counts.failures == ("test_flash_attn::test_b", "test_flash_attn::test_e")
    assert counts.total == 6


def test_count_progress(tmp_path):
    lines = [
        {"event": "collected", "count": 5, "pruned": []},
        *[
            {"event": "report", "nodeid": "t::a", "when": w, "outcome": "passed"}
            for w in ("setup", "call", "teardown")
        ],
        {"event": "report", "nodeid": "t::b", "when": "setup", "outcome": "passed"},
        {"event": "report", "nodeid": "t::b", "when": "call", "outcome": "failed"},
        {"event": "report", "nodeid": "t::b", "when": "teardown", "outcome": "failed"},
        {"event": "report", "nodeid": "t::c", "when": "setup", "outcome": "skipped"},
        {"event": "report", "nodeid": "t::d", "when": "setup", "outcome": "failed"},
        {
            "event": "report",
            "nodeid": "t::e",
            "when": "setup",
            "outcome": "passed",
        },  # killed mid-test: not counted
    ]
    path = tmp_path / "progress.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{truncated")
    counts, selected = gputest.count_progress(path)
    assert (counts.passed, counts.failed, counts.skipped, counts.errors, selected) == (1, 1, 1, 1, 5)
    assert counts.failures == ("t::b", "t::d")


# ----------------------------------------------------------------------------------------- the result file


def _checks(*passed: bool, error=None) -> dict:
    return {
        "schema": 1,
        "passed": all(passed) and not error,
        "error": error,
        "seconds": 3.2,
        "env": {
            "torch": "2.11.0+cu130",
            "cuda": "13.0",
            "python": "3.12.3",
            "package_version": "2.8.3.post2",
            "package_file": "/tmp/v/lib/python3.12/site-packages/flash_attn/__init__.py",
        },
        "cases": [
            {
                "name": f"func-fp16-d64-causal-{i}",
                "kind": "func",
                "dtype": "fp16",
                "headdim": 64,
                "causal": True,
                "max_err": 1e-3,
                "ref_err": 1e-3,
                "tol": 2e-3 + 1e-5,
                "passed": p,
                "seconds": 0.01,
                "checks": [],
            }
            for i, p in enumerate(passed)
        ],
    }


UPSTREAM = {
    "file": "test_flash_attn.py",
    "select": "x",
    "selected": 720,
    "passed": 700,
    "failed": 0,
    "skipped": 20,
    "errors": 0,
    "timed_out": False,
    "seconds": 100.0,
}


def _result(checks, upstream=None):
    return gputest.build_result(
        wheel=gputest.describe_wheel(Path(WHEEL)),
        sha256="ab" * 32,
        gpu=H100,
        plan=gputest.EnvPlan(gputest.ENV_REUSED, "matches"),
        checks_name="flash_attn",
        checks=checks,
        upstream=upstream,
        started=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        duration_s=12.34,
    )


def test_result_schema(tmp_path):
    result = _result(_checks(True, True), UPSTREAM)
    assert result["passed"] is True
    for key in (
        "schema",
        "wheel",
        "sha256",
        "passed",
        "gpu",
        "cuda",
        "torch",
        "env",
        "cases",
        "upstream",
        "duration_s",
        "started",
    ):
        assert key in result
    assert result["schema"] == 1 and result["wheel"] == WHEEL
    assert result["gpu"] == {
        "name": "NVIDIA H100 80GB HBM3",
        "capability": "9.0",
        "driver": "580.65.06",
        "probe": "nvidia-smi",
    }
    assert (result["cuda"], result["torch"], result["env"]) == ("13.0", "2.11.0+cu130", "reused-runner-torch")
    assert result["started"] == "2026-01-02T03:04:05Z" and result["duration_s"] == 12.3
    for case in result["cases"]:
        assert set(gputest.CASE_KEYS) <= set(case)
    for key in ("selected", "passed", "failed", "skipped", "errors", "timed_out", "seconds"):
        assert key in result["upstream"]
    path = tmp_path / f"{WHEEL}.gpu.json"
    gputest.write_result(path, result)
    assert json.loads(path.read_text()) == result
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("checks", "upstream", "passed"),
    [
        (_checks(True), None, True),
        (_checks(True, False), None, False),
        (_checks(), None, False),  # no case ran
        (_checks(True, error="ImportError: flash_attn_2_cuda"), None, False),
        (_checks(True), {**UPSTREAM, "failed": 1}, False),
        (_checks(True), {**UPSTREAM, "errors": 1}, False),
        (
            _checks(True),
            {**UPSTREAM, "timed_out": True, "passed": 300},
            True,
        ),  # a timeout alone is no failure
        (_checks(True), {**UPSTREAM, "passed": 0, "skipped": 0}, False),  # a selection that ran nothing
    ],
)
def test_result_passed(checks, upstream, passed):
    assert _result(checks, upstream)["passed"] is passed


# ----------------------------------------------------------------------------------------- CLI and order


def test_cli_skips_without_gpu(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(gputest, "probe_gpu", lambda python: calls.append("probe"))
    for name in ("describe_wheel", "rules_for", "load_audit_archs", "plan_env", "make_env", "run_checks"):
        monkeypatch.setattr(gputest, name, lambda *a, _n=name, **k: calls.append(_n) or pytest.fail(_n))
    assert cli.main(["gpu-test", "dummy.whl"]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA GPU found: skipping GPU tests"
    assert cli.main(["gpu-test", "dummy.whl", "--require-gpu"]) == 1
    assert capsys.readouterr().out.strip() == "no CUDA GPU found: --require-gpu was given"
    assert cli.main(["gpu-test", "dummy.whl", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["status"] == "skipped" and payload["reason"] == gputest.NO_GPU
    assert calls == ["probe", "probe", "probe"]  # nothing but the probe, every time


def test_cli_refuses_before_installing(monkeypatch, tmp_path, capsys):
    wheel = _wheel(tmp_path, WHEEL, {"flash_attn/__init__.py": ""})
    Path(f"{wheel}.audit.json").write_text(json.dumps({"archs": {"sass": ["sm_80"], "ptx": []}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gputest, "probe_gpu", lambda python: H100)
    monkeypatch.setattr(gputest, "make_env", lambda *a, **k: pytest.fail("installed before refusing"))
    assert cli.main(["gpu-test", str(wheel)]) == 1
    out = capsys.readouterr().out
    assert "cannot run on NVIDIA H100 80GB HBM3 (sm90)" in out and "sm_80" in out
    assert not Path(f"{wheel}.gpu.json").exists()
    monkeypatch.setattr(gputest, "probe_gpu", lambda python: T4)
    assert cli.main(["gpu-test", str(wheel)]) == 0
    assert "unsupported GPU: flash-attn 2 needs Ampere (sm80) or newer" in capsys.readouterr().out


def test_cli_on_this_machine(tmp_path):
    """The real command, real probe: on a machine without a GPU it must skip (exit 0) with the message."""
    if gputest.probe_gpu(sys.executable) is not None:
        pytest.skip("this machine has a GPU")
    src = Path(gputest.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "wheelfarm", "gpu-test", str(tmp_path / "dummy.whl")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no CUDA GPU found: skipping GPU tests"
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ env and upstream, real


def _wheel(dest: Path, filename: str, files: dict[str, str], requires=()) -> Path:
    """A small real wheel with ``files`` as payload."""
    dist, version = filename.split("-")[:2]
    info = f"{dist}-{version}.dist-info"
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {dist.replace('_', '-')}",
        f"Version: {version}",
        *[f"Requires-Dist: {r}" for r in requires],
    ]
    tag = "-".join(filename[:-4].split("-")[2:])
    payload = {
        **files,
        f"{info}/METADATA": "\n".join(meta) + "\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n",
    }
    rows = []
    for path, text in payload.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(text.encode())}")
    payload[f"{info}/RECORD"] = "\n".join([*rows, f"{info}/RECORD,,"]) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / filename
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in payload.items():
            zf.writestr(path, text)
    return out


def _py_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def test_make_env_reuses_runner_and_installs_offline(tmp_path):
    """A venv over this Python's site-packages, the wheel and a dep from --find-links, nothing online."""
    tag = _py_tag()
    wheel = _wheel(
        tmp_path / "wh",
        f"demo_ext-1.0+cu13torch2.11cxx11abiTRUE-{tag}-{tag}-linux_x86_64.whl",
        {"demo_ext/__init__.py": "VALUE = 42\n"},
        requires=["torch==2.11.*", "demo-dep"],
    )
    links = tmp_path / "links"
    _wheel(links, "demo_dep-0.1-py3-none-any.whl", {"demo_dep/__init__.py": ""})
    gputest.probe_python.cache_clear()
    plan = gputest.EnvPlan(
        gputest.ENV_REUSED, "test", site_dirs=gputest.probe_python(sys.executable).site_dirs
    )
    extra = gputest.requirements(gputest.wheel_requires(wheel), [], upstream=False)
    assert extra == ["demo-dep"]
    env = gputest.make_env(
        plan,
        tmp_path / "work",
        sys.executable,
        gputest.describe_wheel(wheel),
        extra,
        gputest.pip_source_args([links], None),
    )
    code = "import demo_ext, demo_dep, pytest, sys; print(demo_ext.VALUE, demo_ext.__file__, sys.prefix)"
    out = subprocess.run(
        [str(env.python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "42" and Path(out[1]).is_relative_to(
        tmp_path / "work" / "venv"
    )  # pytest: from the runner


def test_make_env_reports_pip_failure(tmp_path):
    tag = _py_tag()
    wheel = _wheel(tmp_path, f"demo_ext-1.0-{tag}-{tag}-linux_x86_64.whl", {"demo_ext/__init__.py": ""})
    gputest.probe_python.cache_clear()
    plan = gputest.EnvPlan(
        gputest.ENV_REUSED, "test", site_dirs=gputest.probe_python(sys.executable).site_dirs
    )
    with pytest.raises(gputest.BuildFailed, match="pip could not install no-such-dep"):
        gputest.make_env(
            plan,
            tmp_path / "work",
            sys.executable,
            gputest.describe_wheel(wheel),
            ["no-such-dep"],
            gputest.pip_source_args([tmp_path / "empty"], None),
        )


def _sdist(tmp_path: Path, test_source: str) -> Path:
    sdist = tmp_path / "demo-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in {
            "demo-1.0/tests/test_demo.py": test_source,
            "demo-1.0/demo/__init__.py": "BAD = 1\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return sdist


UPSTREAM_TESTS = textwrap.dedent("""
    import time
    import pytest

    @pytest.mark.parametrize("d", [32, 64, 128])
    @pytest.mark.parametrize("causal", [False, True])
    def test_out(causal, d):
        assert not (causal and d == 128)

    @pytest.mark.parametrize("x", range(1000))
    def test_never_selected(x):
        raise AssertionError

    def test_skip():
        pytest.skip("no")

    def test_zz_slow():
        time.sleep(120)
""")


def test_upstream_subset_counts_and_budget(tmp_path):
    """Extract the test file from an sdist, run a -k subset within a budget, count from junit after SIGINT."""
    test_file = gputest.extract_upstream(
        _sdist(tmp_path, UPSTREAM_TESTS), "tests/test_demo.py", tmp_path / "run"
    )
    env = gputest.TestEnv(Path(sys.executable), (sys.executable, "-m", "pip"), None)
    # 20 s: room for pytest's start-up on a loaded 2-core CI machine; test_zz_slow (120 s) still hits the budget
    up = gputest.run_upstream(env, test_file, "test_out[ or test_skip or test_zz_slow", budget=20)
    assert (up["passed"], up["failed"], up["skipped"], up["selected"]) == (5, 1, 1, 8)
    assert up["timed_out"] is True and up["counted_from"] == "junit"
    assert up["failures"] == ["test_demo::test_out[True-128]"]
    assert up["seconds"] < 20 + gputest.UPSTREAM_GRACE_S
    # test_never_selected's 1000 parameter sets were dropped before pytest built items; one is left
    assert "1 deselected" in (tmp_path / "run" / "pytest.log").read_text()
    assert not gputest.upstream_ok(up)


def test_extract_upstream_errors(tmp_path):
    with pytest.raises(BadInput, match=r"no tests/test_other\.py in this sdist"):
        gputest.extract_upstream(_sdist(tmp_path, ""), "tests/test_other.py", tmp_path / "run")
    with pytest.raises(BadInput, match="not an sdist"):
        gputest.extract_upstream(tmp_path / "missing.tar.gz", "tests/x.py", tmp_path / "run")


# ----------------------------------------------------------------------------------------- the -k speed-up


@pytest.mark.parametrize(
    ("expr", "function", "expected"),
    [
        ("test_a[0.0- and -64-", "test_a", True),
        ("test_b[0.0- and -64-", "test_a", False),
        ("test_b[ or test_a[ and x", "test_a", True),
        ("not test_b[", "test_a", True),
        ("not test_a", "test_a", False),
        ("not (test_b[ or -64-)", "test_a", True),
        ("(test_b[ and foo) or (kvcache[1- and bar)", "test_flash_attn_kvcache", True),
        ("(test_b[ and foo) or (output[1- and bar)", "test_flash_attn_kvcache", False),
        ("", "test_a", True),
    ],
)
def test_may_match(expr, function, expected):
    assert upstream_conftest.may_match(expr, function, ["test_file.py"]) is expected


EXPRESSIONS = [
    "test_p[1- and not -y]",
    "(test_p[ or test_q[) and -2-",
    "not test_q[ and x",
    "test_q and 3",
    "p[0-a or test_q[4",
    "not (test_p[ or -a-)",
    "test_file and 7",
    "parametrize and test_p[",
]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_conftest_selects_what_pytest_selects(tmp_path, expr):
    """Same -k items with and without the speed-up conftest (it may only avoid building the others)."""
    (tmp_path / "test_file.py").write_text(
        textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("c", ["x", "y"])
        @pytest.mark.parametrize("b", ["a", "b"])
        @pytest.mark.parametrize("a", range(10))
        def test_p(a, b, c):
            pass

        @pytest.mark.parametrize("a", range(10))
        def test_q(a):
            pass
    """)
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")

    def collect() -> list[str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
                "-k",
                expr,
                "test_file.py",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        return sorted(x for x in done.stdout.splitlines() if "::" in x)

    plain = collect()
    (tmp_path / "conftest.py").write_text(gputest.gpu_checks.UPSTREAM_CONFTEST.read_text())
    assert collect() == plain


# ----------------------------------------------------------------------------------- end to end, CPU stand-in


def _pytest_wheels(links: Path) -> None:
    """pytest and its dependencies, at the versions this suite runs, for an offline ``--find-links`` (a runner's
    torch env need not have pytest: gpu-test installs it for the upstream subset)."""
    from importlib.metadata import version

    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(links),
                    f"pytest=={version('pytest')}"], check=True, capture_output=True, text=True)


FAKE_FLASH_ATTN = '''
"""CPU stand-in for flash-attn 2 (independent math: fp32 SDPA-style with tril masks)."""
import torch
import torch.nn.functional as F

__version__ = "2.8.3.post2"


def _attn(q, k, v, causal, dropout_p=0.0, keep=None):
    sq, sk = q.shape[0], k.shape[0]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    qf, kf, vf = (t.float().transpose(0, 1) for t in (q, k, v))
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(diagonal=sk - sq)
    s = ((qf @ kf.transpose(-1, -2)) * q.shape[-1] ** -0.5).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    unnorm = p
    if keep is not None:
        p = p * keep / (1 - dropout_p)
    return (p @ vf).transpose(0, 1).to(q.dtype), unnorm


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, deterministic=False,
                    return_attn_probs=False, **kw):
    outs, smask = [], []
    b, sq, h, d = q.shape
    sk = k.shape[1]
    for i in range(b):
        keep = (torch.rand(h, sq, sk) >= dropout_p) if dropout_p > 0 else None
        o, unnorm = _attn(q[i], k[i], v[i], causal, dropout_p, keep)
        outs.append(o)
        if keep is not None:
            smask.append(torch.where(keep, unnorm, -unnorm))
    out = torch.stack(outs)
    if return_attn_probs:
        S = F.pad(torch.stack(smask), (0, -(-sk // 128) * 128 - sk, 0, -(-sq // 128) * 128 - sq))
        return out, None, S
    return out


def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False,
                           **kw):
    cq, ck = cu_q.tolist(), cu_k.tolist()
    return torch.cat([_attn(q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]], causal)[0]
                      for i in range(len(cq) - 1)])


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                            causal=False, **kw):
    lens = cache_seqlens.tolist()
    paged = block_table is not None

    def view(c, i):
        return c[block_table[i].long()].reshape(-1, *c.shape[2:]) if paged else c[i]

    outs = []
    for i in range(q.shape[0]):
        n = lens[i]
        if k is not None:
            for t in range(k.shape[1]):
                if paged:
                    page = k_cache.shape[1]
                    blk = block_table[i, (n + t) // page].long()
                    k_cache[blk, (n + t) % page], v_cache[blk, (n + t) % page] = k[i, t], v[i, t]
                else:
                    k_cache[i, n + t], v_cache[i, n + t] = k[i, t], v[i, t]
            n += k.shape[1]
        outs.append(_attn(q[i], view(k_cache, i)[:n], view(v_cache, i)[:n], causal)[0])
    return torch.stack(outs)
'''

FAKE_UPSTREAM_TESTS = textwrap.dedent("""
    import pytest
    import torch
    from einops import rearrange
    from flash_attn import flash_attn_func

    @pytest.mark.parametrize("d", [32, 64])
    @pytest.mark.parametrize("causal", [False, True])
    def test_flash_attn_output(causal, d):
        q = torch.randn(1, 8, 2, d)
        assert flash_attn_func(q, q, q, causal=causal).shape == q.shape
""")


def test_end_to_end_on_a_cpu_stand_in(tmp_path, monkeypatch, capsys):
    """`wheelfarm gpu-test` for real (venv, pip, checks, upstream subset, result) with a fake GPU and a CPU
    stand-in wheel: the plumbing the GPU run depends on, minus the GPU."""
    python = str(torch_python())
    info = gputest.probe_python(python)
    assert info is not None and info.torch_minor, info
    abi = "TRUE" if info.cxx11abi else "FALSE"
    tag = f"cp{info.python.split('.')[0]}{info.python.split('.')[1]}"
    label = f"cu{(info.cuda or '13').split('.')[0]}torch{info.torch_minor}cxx11abi{abi}"
    wheel = _wheel(
        tmp_path / "wheelhouse",
        f"flash_attn-2.8.3.post2+{label}-{tag}-{tag}-linux_x86_64.whl",
        {"flash_attn/__init__.py": FAKE_FLASH_ATTN},
        requires=[f"torch=={info.torch_minor}.*", "einops"],
    )
    Path(f"{wheel}.audit.json").write_text(json.dumps({"archs": {"sass": ["sm_90"], "ptx": []}}))
    links = tmp_path / "links"
    _wheel(links, "einops-0.8.1-py3-none-any.whl", {"einops/__init__.py": "def rearrange(*a, **k): pass\n"})
    _pytest_wheels(links)
    monkeypatch.setattr(gputest, "probe_gpu", lambda python: H100)
    monkeypatch.setenv(
        "WHEELFARM_GPU_CHECKS_ARGS",
        "--device cpu --only d64-full-113 --only kvcache-bf16 --only varlen-fp16-d64-causal --only dropout",
    )
    monkeypatch.chdir(tmp_path)
    args = [
        "gpu-test",
        str(wheel),
        "--reuse-env",
        "--python",
        python,
        "--find-links",
        str(links),
        "--json",
        "--upstream-tests",
        str(_sdist(tmp_path, FAKE_UPSTREAM_TESTS)),
        "--upstream-file",
        "tests/test_demo.py",
        "--upstream-select",
        "test_flash_attn_output[ and -64]",
        "--upstream-timeout",
        "120",
    ]
    code = cli.main(args)
    captured = capsys.readouterr()
    assert captured.out, captured.err[-3000:]
    payload = json.loads(captured.out)
    assert code == 0, json.dumps(payload, indent=1)[:4000]
    result = json.loads(Path(f"{wheel}.gpu.json").read_text())
    assert result["passed"] is True and result["env"] == gputest.ENV_REUSED
    assert result["torch"] == info.torch and result["gpu"]["capability"] == "9.0"
    assert len(result["cases"]) == 9 and all(c["passed"] for c in result["cases"])
    assert (result["upstream"]["passed"], result["upstream"]["selected"], result["upstream"]["failed"]) == (
        2,
        2,
        0,
    )
    assert "/venv/" in result["installed"]["file"]


def test_check_cases_are_small_and_named_uniquely():
    python = str(torch_python())
    script = gputest.gpu_checks.script("flash_attn")
    done = subprocess.run([python, str(script), "--list"], capture_output=True, text=True, check=True)
    names = done.stdout.split()
    assert len(names) == len(set(names)) and 40 <= len(names) <= 80
    for needle in (
        "func-fp16-d64",
        "func-bf16-d256-causal",
        "h6kv1",
        "varlen-",
        "kvcache-",
        "-paged",
        "dropout-repro",
    ):
        assert any(needle in n for n in names), needle
