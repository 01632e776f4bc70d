"""Consumers: fresh venvs, plain ``pip install`` and ``uv pip install`` of the fixture package from every
mirror form, picking the right local-label wheel from a variant index and never changing torch.

Forms: the local mirror as file://, the same served by ``python -m http.server`` on 127.0.0.1, the moto S3
bucket (a REAL HTTP S3 endpoint on 127.0.0.1) read anonymously through the S3 REST endpoint under a
public-read bucket policy on the prefix (how a bucket is served without a website endpoint: moto enforces the
policy for anonymous GETs; directory URLs work because the store writes each page under its directory key
too), and GitHub Pages (the pages folder as file://) linking to release assets on the GitHub contract
stand-in.

Each venv is made with ``python -m venv --without-pip``; pip runs as ``python -m pip --python <venv>`` (this
host's pip installing into the venv), uv as ``uv pip install --python <venv>``. ``torch`` in the venvs is a
pure-Python STAND-IN wheel named torch 2.14.1 (tests/wheelgen.py), put in place with uv (setup, not under
test). Installers see only their index: PIP_*/UV_* variables are dropped and their config files ignored.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from farmtest import need
from ghrelease_server import GitHubStandIn
from test_store_s3 import FAST, make_bucket, moto_endpoint  # noqa: F401 (fixture)
from wheelfarm.publish import Options, publish
from wheelfarm.store import open_store
from wheelfarm.store.local import LocalStore
from wheelgen import make_wheel, write_result

UV = shutil.which("uv")
CU13, CU12 = "cu13torch2.14cxx11abiTRUE", "cu12torch2.8cxx11abiTRUE"
WANT = f"0.1.0+{CU13}"


@pytest.fixture(autouse=True)
def _uv() -> None:
    need(UV is not None, "uv is not installed (pip install uv; .ci/run installs it)")


def installer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_NO_CACHE_DIR="1",
        UV_NO_CONFIG="1",
        UV_NO_CACHE="1",
        UV_PYTHON_DOWNLOADS="never",
    )
    return env


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wheels")
    out = {}
    for label, pin in ((CU13, "torch>=2.14,<2.15"), (CU12, "torch>=2.8,<2.9")):
        w = make_wheel(root / "house", "fixture-attn", f"0.1.0+{label}", requires_dist=[pin])
        write_result(w, ".audit.json", True)
        out[label] = w
    out["torch"] = make_wheel(root / "torch", "torch", "2.14.1", requires_python=None)  # STAND-IN torch
    return out


@pytest.fixture(scope="module")
def local_mirror(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Path:
    mirror = tmp_path_factory.mktemp("mirror")
    publish(LocalStore(mirror), [wheels[CU13], wheels[CU12]], Options())
    return mirror


@pytest.fixture(scope="module")
def http_mirror(local_mirror: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(local_mirror),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/simple/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="module")
def s3_mirror(moto_endpoint: str, wheels: dict[str, Path]) -> str:  # noqa: F811
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in creds.items():
            mp.setenv(k, v)
        bucket = make_bucket(moto_endpoint)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/mirror/*",
                }
            ],
        }
        boto3.client(
            "s3",
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        store = open_store(f"s3://{bucket}/mirror", endpoint_url=moto_endpoint, retry=FAST)
        publish(store, [wheels[CU13], wheels[CU12]], Options())
    return f"{moto_endpoint}/{bucket}/mirror"


@pytest.fixture(scope="module")
def github_pages(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Iterator[str]:
    pages = tmp_path_factory.mktemp("pages")
    with GitHubStandIn(token="t", repos={"acme/wheels"}) as gh, pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_API_URL", gh.base)
        mp.setenv("GITHUB_TOKEN", "t")
        store = open_store("github://acme/wheels@fixture-attn-0.1.0", pages_dir=str(pages), retry=FAST)
        publish(store, [wheels[CU13], wheels[CU12]], Options())
        yield pages.as_uri()


def venv_with_torch(tmp_path: Path, wheels: dict[str, Path]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv/bin/python"
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "--python",
            str(python),
            "--no-index",
            "--find-links",
            str(wheels["torch"].parent),
            "torch==2.14.1",
        ],
        check=True,
        env=installer_env(),
        capture_output=True,
    )
    return python


def install(installer: str, python: Path, index: str, *extra: str) -> subprocess.CompletedProcess[str]:
    if installer == "pip":
        cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--index-url", index, *extra]
    else:
        cmd = [str(UV), "pip", "install", "--python", str(python), "--index-url", index, *extra]
    return subprocess.run(
        [*cmd, "fixture-attn"], env=installer_env(), capture_output=True, text=True, timeout=300
    )


def installed(python: Path) -> tuple[str | None, str]:
    code = (
        "import importlib.metadata as m\ntry:\n import fixture_attn; v = fixture_attn.__version__\n"
        "except ImportError:\n v = None\nprint(v, m.version('torch'))"
    )
    fixture, torch = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return (None if fixture == "None" else fixture), torch


def variant_index(root: str, label: str = CU13) -> str:
    return f"{root}/{label}/simple/"


@pytest.mark.parametrize("installer", ["pip", "uv"])
@pytest.mark.parametrize("form", ["file", "http", "s3", "github"])
def test_install_picks_the_variant_and_keeps_torch(
    request: pytest.FixtureRequest, tmp_path: Path, form: str, installer: str, wheels: dict[str, Path]
) -> None:
    root = {
        "file": lambda: request.getfixturevalue("local_mirror").as_uri(),
        "http": lambda: request.getfixturevalue("http_mirror"),
        "s3": lambda: request.getfixturevalue("s3_mirror"),
        "github": lambda: request.getfixturevalue("github_pages"),
    }[form]()
    python = venv_with_torch(tmp_path, wheels)
    result = install(installer, python, variant_index(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed(python) == (WANT, "2.14.1")  # the cu13/torch 2.14 build; torch untouched
    if installer == "pip":
        assert ".whl.metadata" in result.stdout  # PEP 658: pip read the metadata file, not the wheel


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_wrong_variant_fails_instead_of_changing_torch(
    tmp_path: Path, installer: str, local_mirror: Path, wheels: dict[str, Path]
) -> None:
    python = venv_with_torch(tmp_path, wheels)
    result = install(installer, python, variant_index(local_mirror.as_uri(), CU12))
    assert result.returncode != 0
    assert "torch" in (result.stdout + result.stderr)
    assert installed(python) == (None, "2.14.1")


def test_a_swapped_wheel_is_rejected_by_its_sha256(
    tmp_path: Path, local_mirror: Path, wheels: dict[str, Path]
) -> None:
    """Someone replaced the stored file behind the index's back: the link's #sha256 stops the install."""
    broken = tmp_path / "mirror"
    shutil.copytree(local_mirror, broken)
    evil = make_wheel(
        tmp_path / "evil", "fixture-attn", WANT, requires_dist=["torch>=2.14,<2.15"], salt="evil"
    )
    shutil.copyfile(evil, broken / "wheels/fixture-attn" / wheels[CU13].name)
    python = venv_with_torch(tmp_path, wheels)
    result = install("uv", python, variant_index(broken.as_uri()))
    assert result.returncode != 0 and "hash mismatch" in result.stderr.lower()
    assert installed(python) == (None, "2.14.1")


# ------------------------------------------------------------------- the lines resolve prints, and the global rule


@pytest.fixture(scope="module")
def default_index(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A STAND-IN for PyPI (the consumer's default index): einops, a NEWER torch, and a newer unlabelled
    fixture-attn 0.2.0 that would win if a line did not pin the variant's whole version."""
    root = tmp_path_factory.mktemp("pypi")
    ws = [make_wheel(root / "house", "einops", "0.8.1", requires_python=None),
          make_wheel(root / "house", "torch", "2.15.0", requires_python=None),
          make_wheel(root / "house", "fixture-attn", "0.2.0", requires_dist=["torch"])]
    for w in ws:
        write_result(w, ".audit.json", True)
    publish(LocalStore(root / "index"), ws, Options())
    return (root / "index").as_uri() + "/simple/"


@pytest.fixture(scope="module")
def einops_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The farm's mirror: two variants of fixture-attn that need einops at run time, as flash-attn does."""
    root = tmp_path_factory.mktemp("farm")
    ws = []
    for label, pin in ((CU13, "torch>=2.14,<2.15"), (CU12, "torch>=2.8,<2.9")):
        ws.append(make_wheel(root / "house", "fixture-attn", f"0.1.0+{label}", requires_dist=[pin, "einops"]))
        write_result(ws[-1], ".audit.json", True)
    publish(LocalStore(root / "mirror"), ws, Options())
    return root / "mirror"


def printed_lines(mirror: Path) -> dict[str, str]:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = subprocess.run([sys.executable, "-m", "wheelfarm.cli", "resolve", "--index-url", str(mirror), "--package",
                          "fixture-attn", "--python", py, "--torch", "2.14.1", "--cuda", "13.0", "--json"],
                         capture_output=True, text=True, check=True).stdout
    lines: dict[str, str] = json.loads(out)["lines"]
    return lines


def run_line(line: str, python: Path, default: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed line as a person would, in the venv, with ``default`` as the default index (PyPI's place)."""
    env = installer_env() | {"PIP_INDEX_URL": default, "UV_DEFAULT_INDEX": default}
    words = shlex.split(line.removeprefix("RUN "))  # the Dockerfile line runs as it would in `docker build`
    while "=" in words[0]:  # the environment-variable forms
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if "\n" in line:  # requirements.txt: the file, then `pip install -r` / `uv pip install -r`
        (tmp_path / "requirements.txt").write_text(line + "\n")
        words = ["pip", "install", "-r", str(tmp_path / "requirements.txt")]
    if words[0] == "pip":
        cmd = [sys.executable, "-m", "pip", "--python", str(python), *words[1:]]
    else:
        cmd = [str(UV), "pip", "install", "--python", str(python), *words[3:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def dists(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    return dict(json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                          check=True).stdout))


@pytest.mark.parametrize("form", ["pip", "uv", "pip (env)", "uv (env)", "requirements.txt", "Dockerfile"])
def test_the_printed_line_installs_the_variant_with_einops_and_leaves_torch(
    tmp_path: Path, form: str, einops_mirror: Path, default_index: str, wheels: dict[str, Path]
) -> None:
    line = printed_lines(einops_mirror)[form]
    python = venv_with_torch(tmp_path, wheels)
    result = run_line(line, python, default_index, tmp_path)
    assert result.returncode == 0, line + "\n" + result.stdout + result.stderr
    assert dists(python) == {"fixture-attn": WANT, "torch": "2.14.1", "einops": "0.8.1"}, line


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_the_global_index_never_hands_out_a_variant(
    tmp_path: Path, installer: str, einops_mirror: Path, default_index: str, wheels: dict[str, Path]
) -> None:
    """Alone, the global simple/ index installs nothing (it lists no labelled wheel). Beside the default index,
    pip (which merges indexes) takes that index's plain release; uv (first index that has the project wins) stops
    at the mirror's empty page. Neither gets one of the mirror's variants by the string order of local labels."""
    python = venv_with_torch(tmp_path, wheels)
    alone = install(installer, python, einops_mirror.as_uri() + "/simple/")
    assert alone.returncode != 0 and installed(python) == (None, "2.14.1")
    beside = install(installer, python, default_index, "--extra-index-url", einops_mirror.as_uri() + "/simple/")
    if installer == "pip":
        assert beside.returncode == 0, beside.stdout + beside.stderr
        assert dists(python)["fixture-attn"] == "0.2.0"
    else:
        assert beside.returncode != 0 and "no versions of fixture-attn" in beside.stderr
        assert installed(python) == (None, "2.14.1")
