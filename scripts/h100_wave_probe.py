"""Waves of identical compiles on a fresh GPU runner: is a cold build slower because it runs first, or because of
wheelfarm's nvcc wrapper? (docs/gpu-runs/2026-11-25-h100-bench-sm90lite: wheelfarm's jobs took 6.5 % more
job-seconds than the upstream method's, wheelfarm having run first on a freshly started VM.)

Three waves of JOBS copies of one flash-attn object (the sm90lite source), each wave alone on the machine:
  A  plain nvcc --threads 2 (the upstream method's flags), first on the fresh machine
  B  through wheelfarm's nvcc_cache wrapper, --threads 1 (wheelfarm's flags)
  C  plain nvcc --threads 2 again, now warm
A/C isolates the first-run effect; B/C the wrapper and thread-count effect. Prints and writes JSON with per-wave
wall and the CPU seconds of every job (os.wait4). Runner-specific paths (torch in /opt/torch/.venv, g++ in
/opt/gcc) are those of the device tool's H100 image.

    python3 scripts/h100_wave_probe.py OUT.json      # from the repo root, after scripts/gpu-runner.sh's bootstrap
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from wheelfarm import source  # noqa: E402

JOBS = int(os.environ.get("JOBS", "16"))
OBJECT = os.environ.get("OBJECT", "flash_fwd_split_hdim64_bf16_sm80")
TORCH = os.environ.get("PROBE_TORCH_INCLUDE", "/opt/torch/.venv/lib/python3.12/site-packages/torch/include")
CUDA = os.environ.get("PROBE_CUDA_HOME", "/usr/local/cuda")
CCBIN = os.environ.get("PROBE_CCBIN", "/opt/gcc/bin/gcc")


def args(src: Path, out: Path, threads: int) -> list[str]:
    inc = [src / "csrc/flash_attn", src / "csrc/flash_attn/src", src / "csrc/cutlass/include"]
    return ["-MD", "-MF", f"{out}.d", *(f"-I{p}" for p in inc), f"-I{TORCH}", f"-I{TORCH}/torch/csrc/api/include",
            f"-I{CUDA}/include", "-I/opt/torch/.venv/include", "-I/usr/include/python3.12", "-c",
            str(src / f"csrc/flash_attn/src/{OBJECT}.cu"), "-o", str(out),
            "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr", "--compiler-options", "'-fPIC'", "-O3",
            f"-std={os.environ.get('PROBE_STD', 'c++17')}", "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "--expt-relaxed-constexpr",
            "--expt-extended-lambda", "--use_fast_math", "-DFLASHATTENTION_DISABLE_ALIBI",
            "-DFLASHATTENTION_DISABLE_SOFTCAP", "-DFLASHATTENTION_DISABLE_UNEVEN_K", "-DFLASHATTENTION_DISABLE_LOCAL",
            "-gencode", "arch=compute_90,code=sm_90", "--threads", str(threads), "-DTORCH_API_INCLUDE_EXTENSION_H",
            "-DTORCH_EXTENSION_NAME=flash_attn_2_cuda", "-ccbin", CCBIN]


def wave(name: str, nvcc: list[str], threads: int, src: Path, work: Path, env: dict[str, str]) -> dict:
    start = time.monotonic()
    procs = {}
    for i in range(JOBS):
        out = work / f"{name}-{i}.o"
        procs[subprocess.Popen([*nvcc, *args(src, out, threads)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE).pid] = time.monotonic()
    jobs = []
    while procs:
        pid, status, usage = os.wait4(-1, 0)
        if pid in procs:
            jobs.append({"wall": round(time.monotonic() - procs.pop(pid), 1), "rc": os.waitstatus_to_exitcode(status),
                         "cpu": round(usage.ru_utime + usage.ru_stime, 1)})
    result = {"wave": name, "threads": threads, "wall": round(time.monotonic() - start, 1),
              "cpu_total": round(sum(j["cpu"] for j in jobs), 1),
              "job_wall_mean": round(sum(j["wall"] for j in jobs) / len(jobs), 1),
              "rcs": sorted({j["rc"] for j in jobs})}
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    work = Path(os.environ.get("PROBE_WORK", "/root/probe"))
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    root = source.unpack(REPO / ".wheelfarm/cache/sdists/flash_attn-2.8.3.post2.tar.gz", work / "src")
    patches = REPO / "patches/flash-attn/2.8.3.post2"
    source.apply_patches(root, [patches, patches / "sm90lite"])
    plain = [f"{CUDA}/bin/nvcc"]
    wrapped = [sys.executable, str(REPO / "src/wheelfarm/nvcc_cache.py")]
    env = {**os.environ, "CUDA_HOME": CUDA, "WHEELFARM_REAL_NVCC": f"{CUDA}/bin/nvcc",
           "WHEELFARM_COMPILE_CACHE": str(work / "cache"), "WHEELFARM_CACHE_SALT": "probe"}
    waves = [wave("A-plain-t2-first", plain, 2, root, work, env),
             wave("B-wrapper-t1", wrapped, 1, root, work, env),
             wave("C-plain-t2-warm", plain, 2, root, work, env)]
    Path(sys.argv[1]).write_text(json.dumps({"object": OBJECT, "jobs": JOBS, "waves": waves}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
