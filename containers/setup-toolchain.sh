#!/usr/bin/env bash
# Runs inside a manylinux_2_28 image build (Containerfile.manylinux_2_28_<arch>): the toolchain pinned in
# /opt/wheelfarm/pins.toml for one CUDA minor.
#   gcc-toolset-N (a host compiler CUDA supports; 14 is the image's default) -> /opt/wheelfarm/gcc
#   CUDA toolkit -> /opt/cuda-<CUDA> (install-cuda.py: PyPI nvidia-* wheels; CUDA 12: NVIDIA's RHEL 8 RPMs)
#   ninja (PyPI, pinned) -> /usr/local/bin/ninja
# Usage: setup-toolchain.sh <CUDA major.minor>
set -euxo pipefail
cuda=$1
py=/opt/python/cp312-cp312/bin/python
pins=/opt/wheelfarm/pins.toml
pin() {  # pin cuda 13.0 gcc_toolset -> the value at that key path of pins.toml
  "$py" -c 'import sys, tomllib; t = tomllib.load(open(sys.argv[1], "rb"))
for k in sys.argv[2:]: t = t[k]
print(t)' "$pins" "$@"
}

toolset=$(pin cuda "$cuda" gcc_toolset)
if [[ ! -x /opt/rh/gcc-toolset-$toolset/root/usr/bin/g++ ]]; then
  dnf install -y "gcc-toolset-$toolset-gcc-c++"
  dnf clean all
fi
ln -sfn "/opt/rh/gcc-toolset-$toolset/root" /opt/wheelfarm/gcc

"$py" /opt/wheelfarm/install-cuda.py --pins "$pins" --cuda "$cuda" --prefix "/opt/cuda-$cuda"

PIPX_HOME=/opt/_internal/wheelfarm-pipx PIPX_BIN_DIR=/usr/local/bin \
  pipx install --python "$py" "ninja==$(pin tools ninja)"

# Smoke test: nvcc with this host compiler compiles and links a kernel against the toolkit's cudart.
work=$(mktemp -d)
printf '__global__ void k(int *x) { *x = 1; }\nint main() { k<<<1, 1>>>(nullptr); return 0; }\n' >"$work/t.cu"
PATH=/opt/wheelfarm/gcc/usr/bin:$PATH "/opt/cuda-$cuda/bin/nvcc" -std=c++17 "$work/t.cu" -o "$work/t" \
  -L"/opt/cuda-$cuda/lib" -lcudart
rm -rf "$work"
ninja --version
