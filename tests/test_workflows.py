"""The GitHub workflows, parsed: the plan job's real output drives exactly the matrix keys the build job reads,
and the security rules hold (SHA-pinned actions, least-privilege permissions per job, no secrets or write tokens
where pull requests run, no credentials persisted by checkout, no ``${{ }}`` expanded inside shell scripts).

actionlint and zizmor (``nox -s lint``) check the same files with their own rules; these tests pin the
properties this project relies on, and run wherever pytest runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from wheelfarm.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
FARM, CI = WORKFLOWS / "farm.yml", WORKFLOWS / "ci.yml"
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$")
EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return dict(doc)


@pytest.fixture(scope="module")
def farm() -> dict[str, Any]:
    return load(FARM)


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return load(CI)


def all_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.y*ml"))


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def text(value: Any) -> str:
    return json.dumps(value)


# ------------------------------------------------------------------------------- plan → build data flow


def real_plan_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """What the plan step writes to $GITHUB_OUTPUT, from the real CLI over the real matrix (empty mirror)."""
    out = tmp_path / "github_output"
    assert main(["plan", "--matrix", str(ROOT / "build_matrix.toml"), "--against", str(tmp_path / "empty"),
                 "--json", "--github-output", str(out)]) == 0
    capsys.readouterr()
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


def test_plan_matrix_keys_are_exactly_what_the_build_job_reads(farm: dict[str, Any], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    outputs = real_plan_outputs(tmp_path, capsys)
    include = json.loads(outputs["matrix"])["include"]
    assert include, "the plan of an empty mirror has jobs"
    produced = {key for entry in include for key in entry}
    build = farm["jobs"]["build"]
    used = set(re.findall(r"\bmatrix\.([A-Za-z_][A-Za-z0-9_-]*)", text(build)))
    assert used == produced, f"plan gives {sorted(produced)}, build reads {sorted(used)}"
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert all(len(m["include"]) <= 256 for m in [json.loads(outputs["matrix"])])


def test_build_jobs_run_on_their_platforms_runner(farm: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """aarch64 jobs go to arm runners: the label comes from [platforms] of build_matrix.toml through the plan."""
    include = json.loads(real_plan_outputs(tmp_path, capsys)["matrix"])["include"]
    runners = {(e["platform"], e["runner"]) for e in include}
    assert runners == {("linux_x86_64", "ubuntu-24.04"), ("linux_aarch64", "ubuntu-24.04-arm")}
    assert farm["jobs"]["build"]["runs-on"] == "${{ matrix.runner }}"


def test_plan_job_outputs_are_what_the_cli_writes(farm: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    outputs = real_plan_outputs(tmp_path, capsys)
    plan_job = farm["jobs"]["plan"]
    (plan_step,) = [s for s in steps(plan_job) if s.get("id") == "plan"]
    assert "wheelfarm plan" in plan_step["run"] and '--github-output "$GITHUB_OUTPUT"' in plan_step["run"]
    declared = plan_job["outputs"]
    for name, expr in declared.items():
        ref = re.fullmatch(r"\$\{\{ steps\.plan\.outputs\.([a-z_]+) \}\}", expr)
        assert ref, f"plan output {name}: {expr}"
        assert ref.group(1) in outputs, f"the CLI writes no {ref.group(1)!r}"
    used = set(re.findall(r"needs\.plan\.outputs\.([a-z_]+)", text(farm["jobs"])))
    assert used <= set(declared)


def test_build_job_builds_its_select_in_a_container(farm: dict[str, Any]) -> None:
    build = farm["jobs"]["build"]
    assert build["needs"] == "plan" and build["if"] == "needs.plan.outputs.jobs != '0'"
    assert build["strategy"]["fail-fast"] is False and build["timeout-minutes"] <= 360
    (run,) = [s for s in steps(build) if "nox -s build" in s.get("run", "")]
    assert run["env"]["SELECT"] == "${{ matrix.select }}"  # through the environment, never into the script
    assert 'nox -s build -- --backend container --cache "$CACHE" --select "${filters[@]}"' in run["run"]
    assert run["env"]["CACHE"] == "${{ vars.WHEELFARM_CACHE_URL || '.wheelfarm/compile-cache' }}"
    assert any("rm -rf" in s.get("run", "") for s in steps(build)), "disk-space cleanup"
    caches = [s["with"] for s in steps(build) if s.get("uses", "").startswith("actions/cache@")]
    paths = {c["path"] for c in caches}
    assert {"~/.cache/pip", "~/.cache/wheelfarm/cuda", ".wheelfarm/compile-cache"} <= paths
    (compile_cache,) = [s for s in steps(build) if s.get("with", {}).get("path") == ".wheelfarm/compile-cache"]
    assert "${{ matrix.group }}" in compile_cache["with"]["key"]
    assert compile_cache["if"] == "vars.WHEELFARM_CACHE_URL == ''"  # the local folder only without the S3 cache
    (upload,) = [s for s in steps(build) if s.get("uses", "").startswith("actions/upload-artifact@")
                 and "wheels-" in s["with"]["name"]]
    assert "wheelhouse/*.whl" in upload["with"]["path"] and "audit.json" in upload["with"]["path"]


def test_pipeline_order_and_gpu_runner(farm: dict[str, Any]) -> None:
    jobs = farm["jobs"]
    gpu = jobs["gpu-test"]
    assert gpu["runs-on"] == ["self-hosted", "linux", "gpu", "sm90"]
    assert set(gpu["needs"]) == {"plan", "build"}
    assert any("nox\" -s gpu_test" in s.get("run", "") or "nox -s gpu_test" in s.get("run", "")
               for s in steps(gpu))
    downloads = [s for s in steps(gpu) if s.get("uses", "").startswith("actions/download-artifact@")]
    # The x86_64 GPU runner takes the x86_64 wheels only (an aarch64 wheel cannot install there): the pattern
    # must match the build's artifact names, which end with the cell's platform.
    (upload,) = [s for s in steps(jobs["build"]) if s.get("uses", "").startswith("actions/upload-artifact@")
                 and "wheels-" in s["with"]["name"]]
    assert upload["with"]["name"].endswith("-${{ matrix.platform }}")
    assert downloads and downloads[0]["with"]["pattern"] == "wheels-*-linux_x86_64"
    for name in ("publish", "release"):
        assert set(jobs[name]["needs"]) == {"plan", "build", "gpu-test"}
        runs = " ".join(s.get("run", "") for s in steps(jobs[name]))
        assert "wheelfarm publish wheelhouse" in runs and "--require-gpu-result --gpu-untested aarch64" in runs
        assert "wheelfarm index --to" in runs  # reindex
        assert jobs[name]["concurrency"]["cancel-in-progress"] is False
    assert farm["concurrency"]["cancel-in-progress"] is False
    groups = [farm["concurrency"]["group"]] + [jobs[n]["concurrency"]["group"] for n in ("publish", "release")]
    assert len(set(groups)) == 3, "a job sharing the run's own group would wait for itself"
    assert "${{" not in farm["concurrency"]["group"], "one farm run at a time, whatever the ref"


def test_triggers(farm: dict[str, Any], ci: dict[str, Any]) -> None:
    assert set(farm["on"]) == {"schedule", "workflow_dispatch"}
    assert set(farm["on"]["workflow_dispatch"]["inputs"]) == {"select", "force"}
    assert farm["on"]["workflow_dispatch"]["inputs"]["force"]["type"] == "boolean"
    assert "pull_request" in ci["on"]
    assert {"lint", "tests", "fixture-build"} <= set(ci["jobs"])
    assert "nox -s lint" in text(ci["jobs"]["lint"]) and "nox -s tests" in text(ci["jobs"]["tests"])
    assert "package=fixture-attn" in text(ci["jobs"]["fixture-build"])


# ------------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_sha_with_its_version(path: Path) -> None:
    found = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = USES_LINE.match(line)
        if not m:
            continue
        found += 1
        ref, rest = m.group(1), m.group(2)
        if ref.startswith("./"):
            continue
        assert SHA_PIN.match(ref), f"{path.name}:{number}: {ref} is not pinned to a full commit SHA"
        assert re.fullmatch(r"\s*#\s*v\d+\.\d+\.\d+\s*", rest), f"{path.name}:{number}: no '# vX.Y.Z' comment"
    assert found


def test_same_action_same_pin_everywhere() -> None:
    pins: dict[str, set[str]] = {}
    for path in all_workflows():
        for line in path.read_text().splitlines():
            m = USES_LINE.match(line)
            if m and "@" in m.group(1):
                action, sha = m.group(1).split("@")
                pins.setdefault(action, set()).add(sha)
    assert {a: s for a, s in pins.items() if len(s) > 1} == {}


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_least_privilege_permissions(path: Path) -> None:
    wf = load(path)
    assert wf.get("permissions") in ({}, {"contents": "read"}), "top level: nothing, or read-only contents"
    for name, job in wf["jobs"].items():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{path.name}: job {name} sets no permissions of its own"
        writes = {k for k, v in perms.items() if v == "write"}
        allowed = {("farm.yml", "publish"): {"id-token"}, ("farm.yml", "release"): {"contents"},
                   ("farm.yml", "build"): {"id-token"}}  # build: the compile cache's role, through OIDC
        assert writes == allowed.get((path.name, name), set()), f"{path.name}: job {name} may write {writes}"


def test_oidc_only_in_the_s3_publish_job_and_for_the_build_cache(farm: dict[str, Any]) -> None:
    """Two roles, each for one thing: publishing (the publish job) and the compile cache (build jobs, before the
    build step, only when the shared cache is configured); never long-lived keys."""
    roles = {}
    for name, job in farm["jobs"].items():
        aws = [s for s in steps(job) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
        assert len(aws) == (1 if name in ("publish", "build") else 0), name
        if aws:
            assert set(aws[0]["with"]) >= {"role-to-assume", "aws-region"}
            assert "aws-access-key-id" not in aws[0]["with"], "OIDC role assumption, no long-lived keys"
            roles[name] = aws[0]["with"]["role-to-assume"]
    assert roles == {"publish": "${{ vars.WHEELFARM_AWS_ROLE_ARN }}", "build": "${{ vars.WHEELFARM_CACHE_ROLE_ARN }}"}
    build = steps(farm["jobs"]["build"])
    (aws_step,) = [s for s in build if s.get("uses", "").startswith("aws-actions/")]
    assert aws_step["if"] == "vars.WHEELFARM_CACHE_URL != ''"
    assert build.index(aws_step) < next(i for i, s in enumerate(build) if "nox -s build" in s.get("run", ""))


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_no_pull_request_target_and_no_secrets_on_pull_requests(path: Path) -> None:
    wf = load(path)
    assert "pull_request_target" not in wf["on"] and "workflow_run" not in wf["on"]
    if "pull_request" in wf["on"]:
        assert "secrets." not in path.read_text(), f"{path.name} runs on pull requests and names a secret"
        assert "github.token" not in path.read_text()
        for name, job in wf["jobs"].items():
            assert "environment" not in job, name
            assert "self-hosted" not in text(job.get("runs-on")), f"{name}: PR code on a self-hosted runner"


def test_farm_never_runs_pull_request_code(farm: dict[str, Any]) -> None:
    assert not {"pull_request", "pull_request_target", "push"} & set(farm["on"])


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_checkout_never_persists_credentials(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        for step in steps(job):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, name


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_no_expression_is_expanded_inside_a_script(path: Path) -> None:
    """Template injection: inputs, matrix values and event data reach scripts through `env:` only."""
    for name, job in load(path)["jobs"].items():
        for step in steps(job):
            assert "${{" not in step.get("run", ""), f"{path.name}: job {name}, step {step.get('name')}"


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_every_job_has_a_timeout(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 360, name


def test_actionlint_knows_the_gpu_runner_labels(farm: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    custom = set(farm["jobs"]["gpu-test"]["runs-on"]) - {"self-hosted", "linux"}
    assert custom <= set(config["self-hosted-runner"]["labels"])


def test_expressions_only_read_known_contexts() -> None:
    """No expression reads `github.event.*` free text (titles, bodies, branch names) anywhere."""
    for path in all_workflows():
        for expr in EXPR.findall(path.read_text()):
            assert "github.event." not in expr or "pull_request.number" in expr, f"{path.name}: {expr}"
            assert "github.head_ref" not in expr, f"{path.name}: {expr}"
