#!/bin/bash
# wheelfarm: the group's cibuildwheel steps, run by wheelfarm (steps.py)
set -eo pipefail
echo '::group::wheelfarm steps: cp312-manylinux_x86_64'
(
export CIBUILDWHEEL_BUILD_IDENTIFIER=cp312-manylinux_x86_64
export PATH=/opt/python/cp312-cp312/bin:$PATH
export CUDA_HOME="/usr/local/cuda-13.0"
export CUDA_PATH="/usr/local/cuda-13.0"
export WHEELFARM_REAL_NINJA="$(which ninja)"
export WHEELFARM_DURATIONS="/wf/durations.json"
export PATH="/wf/bin:$CUDA_HOME/bin:$PATH"
export CC="gcc"
export CXX="g++"
export MAX_JOBS="16"
export NVCC_THREADS="1"
export TORCH_CUDA_ARCH_LIST="9.0"
export FLASH_ATTENTION_FORCE_BUILD="TRUE"
export FLASH_ATTN_CUDA_ARCHS="90"
export FLASH_ATTN_LOCAL_VERSION="cu13torch2.11cxx11abiTRUE.sm90lite"
export FLASH_ATTENTION_FORCE_CXX11_ABI="TRUE"
export PYTORCH_NVCC="/opt/python/cp312-cp312/bin/python /wf/lib/nvcc_cache.py"
export WHEELFARM_REAL_NVCC="$CUDA_HOME/bin/nvcc"
export WHEELFARM_COMPILE_CACHE="/wf/compile-cache"
export WHEELFARM_CACHE_SALT="2.11.0+cu130|d0f9f0b08a986cdeadbffcf5ec8b3a8f514366c68ad1853d3ab061bc83cc340b|0d2c15777f29760237542354046404fca252a54648427719c0ad471a7577d948|d05513dcfb6f4e75a960cb708f4670502dbcc382d6d2bed108a1e41d1054e660|/var/tmp/wf-root"
export WHEELFARM_CACHE_STATS="/wf/logs/cache-stats"
export PIP_CACHE_DIR="/wf/pip-cache"
export PIP_CERT="/etc/ssl/certs/ca-certificates.crt"
echo "before-all group $(date +%s.%N)" >> /wf/logs/marks && /usr/local/cuda-13.0/bin/nvcc --version && echo "after-all group $(date +%s.%N)" >> /wf/logs/marks
echo "before $CIBUILDWHEEL_BUILD_IDENTIFIER $(date +%s.%N)" >> /wf/logs/marks && wf_torch="/wf/torch/torch-2.11.0+cu130/cp$(python -c 'import sys; print("%d%d" % sys.version_info[:2])')" && if [ ! -e "$wf_torch/.ready" ]; then mkdir -p "$(dirname "$wf_torch")" && t=$(mktemp -d "$wf_torch.part.XXXXXX") && python -m pip install --no-compile --target "$t/site-packages" torch==2.11.0+cu130 && touch "$t/.ready" && (mv -T "$t" "$wf_torch" 2>/dev/null || rm -rf "$t") || (rm -rf "$t"; exit 1); fi && echo "$wf_torch/site-packages" > "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/wheelfarm-torch.pth" && python -m pip install -q build 'setuptools>=69' wheel ninja packaging psutil && echo "python $CIBUILDWHEEL_BUILD_IDENTIFIER" >> /wf/logs/cache-stats && echo "start $CIBUILDWHEEL_BUILD_IDENTIFIER $(date +%s.%N)" >> /wf/logs/marks
rm -rf /tmp/wheelfarm-built && mkdir -p /tmp/wheelfarm-built /output
cd /project && python -m build --wheel --no-isolation --skip-dependency-check --outdir /tmp/wheelfarm-built .
wheel=$(ls /tmp/wheelfarm-built/*.whl)
echo "built $CIBUILDWHEEL_BUILD_IDENTIFIER $(date +%s.%N)" >> /wf/logs/marks && (mkdir -p "/wf/logs/ninja/$CIBUILDWHEEL_BUILD_IDENTIFIER/build/temp" && cp /project/build/temp*-cpython-$(python -c 'import sys; print("%d%d" % sys.version_info[:2])')/.ninja_log "/wf/logs/ninja/$CIBUILDWHEEL_BUILD_IDENTIFIER/build/temp/") || true && auditwheel repair --plat auto --no-update-tags --exclude 'libtorch*.so*' --exclude 'libc10*.so*' --exclude 'libshm*.so*' --exclude 'libcaffe2_*.so*' --exclude 'libcudart.so*' --exclude 'libcuda.so*' --exclude 'libnvidia-ml.so*' --exclude 'libcublas*.so*' --exclude 'libcudnn*.so*' --exclude 'libnvrtc*.so*' --exclude 'libnccl*.so*' --exclude 'libcufft*.so*' --exclude 'libcurand*.so*' --exclude 'libcusolver*.so*' --exclude 'libcusparse*.so*' --exclude 'libnvJitLink*.so*' --exclude 'libnvToolsExt*.so*' --exclude 'libcupti*.so*' --exclude 'libnvshmem*.so*' --exclude 'libcufile*.so*' -w /output "$wheel" && echo "repaired $CIBUILDWHEEL_BUILD_IDENTIFIER $(date +%s.%N)" >> /wf/logs/marks
)
