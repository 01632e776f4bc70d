"""The farm's pipeline (.github/workflows/farm.yml) run on this machine, every step for real, through the CLI:

plan against an empty mirror → build the planned job (the fixture package's group: cp311 + cp312) → audit →
publish to a local mirror AND to S3 (moto's ThreadedMotoServer on 127.0.0.1, a real HTTP S3 endpoint) → plan
again: 0 missing, in well under 60 s, read through the store layer and over HTTP without credentials (the S3
REST endpoint under a public-read bucket policy, as the workflow's plan job reads the mirror) → ``pip install``
from the local mirror's variant index into a fresh venv, and import the compiled extension.

The build is the session's ``fixture_build`` (tests/conftest.py: ``wheelfarm build`` on the host backend, real
nvcc): this test checks that the plan's ``--select`` picks exactly the cells that build made, then takes its
wheels. ``WHEELFARM_PIPELINE_BACKEND=container`` builds the planned job with ``--backend container`` instead (as
the workflow does; needs podman and the container backend). The GPU test is the one step left out: no GPU here
(tests/gpu and ``nox -s gpu_test`` on the GPU machine cover it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from farmtest import FixtureBuild, run_wheelfarm
from test_store_s3 import client, make_bucket, moto_endpoint  # noqa: F401 (moto_endpoint is a fixture)
from wheelfarm.config import load
from wheelfarm.matrix import Cell, expand, select
from wheelfarm.toolchain import ensure_build_env

ROOT = Path(__file__).resolve().parents[1]
MATRIX = str(ROOT / "build_matrix.toml")
SELECT = ["package=fixture-attn"]  # the farm's whole matrix, narrowed to the fixture package
LABEL = "cu13torch2.14cxx11abiTRUE"
PREFIX = "mirror"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
TIMES: dict[str, float] = {}

pytestmark = pytest.mark.slow


def wheelfarm(*args: str, env: dict[str, str] | None = None, stage: str | None = None,
              timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess from the repository root; ``env`` replaces the environment when given."""
    start = time.monotonic()
    if env is None:
        proc = run_wheelfarm(*args, timeout=timeout)
    else:
        proc = subprocess.run([sys.executable, "-m", "wheelfarm", *args], cwd=ROOT, text=True, capture_output=True,
                              env=env, timeout=timeout)
    if stage:
        TIMES[stage] = time.monotonic() - start
    assert proc.returncode == 0, f"wheelfarm {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def plan_json(against: str, env: dict[str, str] | None = None, stage: str | None = None) -> dict[str, Any]:
    proc = wheelfarm("plan", "--matrix", MATRIX, "--select", *SELECT, "--against", against, "--json",
                     env=env, stage=stage)
    return dict(json.loads(proc.stdout))


def no_aws(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with no AWS credentials at all (the plan job of the workflow has none)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**base, **(env or {}), "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def cells() -> list[Cell]:
    return select(expand(load(MATRIX)), SELECT)


# ------------------------------------------------------------------------------------------------ stages


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def planned(base: Path) -> dict[str, Any]:
    return plan_json(str(base / "mirror"), stage="plan (empty mirror)")


@pytest.fixture(scope="module")
def wheelhouse(planned: dict[str, Any], base: Path, request: pytest.FixtureRequest) -> Path:
    """The planned job, built: its wheels in a wheelhouse of their own (no audit results yet)."""
    (job,) = planned["chunks"][0]["include"]
    house = base / "wheelhouse"
    house.mkdir()
    if os.environ.get("WHEELFARM_PIPELINE_BACKEND") == "container":
        wheelfarm("build", "--backend", "container", "--select", *job["select"].split(), "--wheelhouse",
                  str(house), "--work-dir", str(base / "work"), "--no-audit", stage="build (container)",
                  timeout=5400)
        for side in house.glob("*.audit.json"):
            side.unlink()
    else:
        start = time.monotonic()
        build: FixtureBuild = request.getfixturevalue("fixture_build")
        TIMES["build (host, session fixture)"] = time.monotonic() - start
        picked = {c.wheel for c in select(expand(load(MATRIX)), job["select"].split())}
        built = {Path(r["wheel"]).name for r in build.results if r["ok"]}
        assert picked == built, "the plan's --select must pick exactly the cells the fixture build made"
        for result in build.results:
            shutil.copy2(result["wheel"], house)
    return house


@pytest.fixture(scope="module")
def audited(wheelhouse: Path) -> list[Path]:
    wheels = sorted(wheelhouse.glob("*.whl"))
    config = load(MATRIX)
    start = time.monotonic()
    for wheel in wheels:
        (cell,) = [c for c in cells() if c.wheel == wheel.name]
        python = ensure_build_env(config, cell)  # cached by the build: the cell's torch, to check symbols against
        wheelfarm("audit", str(wheel), "--archs", ",".join(cell.archs), "--python", str(python))
    TIMES["audit"] = time.monotonic() - start
    return wheels


@pytest.fixture(scope="module")
def local_mirror(audited: list[Path], base: Path) -> Path:
    mirror = base / "mirror"
    wheelfarm("publish", str(audited[0].parent), "--to", str(mirror), stage="publish (local)")
    return mirror


@pytest.fixture(scope="module")
def s3(audited: list[Path], moto_endpoint: str) -> Iterator[dict[str, str]]:  # noqa: F811
    """The wheels published to a moto S3 bucket; its prefix readable anonymously (a public mirror)."""
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": moto_endpoint}
    bucket = make_bucket(moto_endpoint)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/{PREFIX}/*"}]}
    client(moto_endpoint).put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    target = f"s3://{bucket}/{PREFIX}"
    wheelfarm("publish", str(audited[0].parent), "--to", target, env=no_aws(env), stage="publish (S3)")
    wheelfarm("index", "--to", target, env=no_aws(env), stage="reindex (S3)")
    yield {"target": target, "url": f"{moto_endpoint}/{bucket}/{PREFIX}", "env": json.dumps(env)}


# ------------------------------------------------------------------------------------------------- tests


def test_plan_of_an_empty_mirror_is_the_fixture_group(planned: dict[str, Any]) -> None:
    assert (planned["cells"], planned["missing"], planned["jobs"]) == (2, 2, 1)
    (job,) = planned["chunks"][0]["include"]
    assert job["group"] == cells()[0].group and job["pythons"] == ["3.11", "3.12"] and job["cells"] == 2


def test_build_and_audit(audited: list[Path]) -> None:
    assert sorted(w.name for w in audited) == sorted(c.wheel for c in cells())
    for wheel in audited:
        report = json.loads(wheel.with_name(wheel.name + ".audit.json").read_text())
        assert report["passed"] is True, report


def test_replan_against_the_local_mirror_is_empty_and_fast(local_mirror: Path) -> None:
    doc = plan_json(str(local_mirror), stage="re-plan (local)")
    assert (doc["present"], doc["missing"], doc["chunks"]) == (2, 0, [])
    assert TIMES["re-plan (local)"] < 60
    proc = wheelfarm("plan", "--matrix", MATRIX, "--select", *SELECT, "--against", str(local_mirror))
    assert proc.stdout.startswith("nothing to build: all 2 selected cells are in")


def test_replan_against_s3_is_empty_through_the_store_and_over_http(s3: dict[str, str]) -> None:
    env = json.loads(s3["env"])
    doc = plan_json(s3["target"], env=no_aws(env), stage="re-plan (S3, store layer)")
    assert (doc["present"], doc["missing"]) == (2, 0)
    doc = plan_json(s3["url"], env=no_aws(), stage="re-plan (S3 over HTTP, no credentials)")
    assert (doc["present"], doc["missing"]) == (2, 0)
    assert max(TIMES["re-plan (S3, store layer)"], TIMES["re-plan (S3 over HTTP, no credentials)"]) < 60


def test_pip_install_from_the_variant_index(local_mirror: Path, base: Path) -> None:
    """A fresh venv whose only torch is the build's (layered in by a .pth file, not installed), then plain pip
    against the mirror's variant index: it must take our wheel, keep torch, and import the CUDA extension."""
    (cp311,) = [c for c in cells() if c.python == f"{sys.version_info.major}.{sys.version_info.minor}"]
    torch_python = ensure_build_env(load(MATRIX), cp311)
    torch_site = subprocess.run([str(torch_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
    venv = base / "consumer"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_build_torch.pth").write_text(torch_site + "\n")
    index = (local_mirror / LABEL / "simple").as_uri() + "/"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_NO_CACHE_DIR="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--index-url", index,
                           "fixture-attn"], capture_output=True, text=True, env=env, timeout=600)
    TIMES["pip install"] = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = proc.stdout.split("Successfully installed", 1)[1].split()
    assert installed == [f"fixture-attn-0.1.0+{LABEL.lower()}"], proc.stdout  # pip prints the normalized version
    code = ("import importlib.metadata as m, torch, fixture_attn, fixture_attn_cuda\n"
            "print(m.version('fixture-attn'), torch.__version__, fixture_attn_cuda.__file__)")
    shown = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    version, torch_version, module = shown.stdout.split()
    assert Version(version) == Version(f"0.1.0+{LABEL}") and torch_version.startswith("2.14.")
    assert Path(module).is_relative_to(venv), module


def test_zz_report_stage_times() -> None:
    """Not a check: the stage timings, for the log (pytest -s or -rA shows them)."""
    for stage, seconds in TIMES.items():
        print(f"{stage:45s} {seconds:8.1f}s")
