#!/usr/bin/env bash
# Build (or load from cache) the OFFLINE TEST IMAGE: a manylinux-like stand-in made from Debian bullseye
# (glibc 2.31) with the /opt/python/<tag> layout cibuildwheel expects. It is NOT manylinux; production uses
# containers/Containerfile.manylinux_2_28_<arch> (docs/containers.md).
#
#   scripts/build-test-image.sh            -> last line of stdout: localhost/wheelfarm-testimage:<content-hash>
#
# The tag is a hash of this script, containers/testimage/*, the host CA bundle baked in and the architecture.
# Order: image already in podman (seconds) > cache tarball `zcat | podman load` > cold build (debootstrap,
# apt, CPython 3.11 and 3.12 compiled inside; see docs/containers.md for times), which saves the cache tarball.
# WHEELFARM_IMAGE_CACHE overrides ~/.cache/wheelfarm/images; WHEELFARM_NO_COLD_BUILD=1 exits 3 instead of a
# cold build. Not bit-reproducible: apt takes bullseye's current packages. Needs root and
# scripts/setup-podman.sh. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe=$(cd "$here/../containers/testimage" && pwd)
cache=${WHEELFARM_IMAGE_CACHE:-$HOME/.cache/wheelfarm/images}
mirror=${WHEELFARM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bullseye
arch=$(dpkg --print-architecture)
host_ca=/etc/ssl/certs/ca-certificates.crt
ubuntu_mirror=${WHEELFARM_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
# CPython sources built inside the image: "file url sha256". 3.11.2 is Debian bookworm's orig tarball
# (python3.11_3.11.2-6+deb12u6.dsc, Checksums-Sha256); Debian's pool no longer carries 3.12, so 3.12.3 is
# Ubuntu noble's (dists/noble/main/source/Sources: python3.12 3.12.3-1, Checksums-Sha256).
py_sources=(
  "python3.11_3.11.2.orig.tar.gz $mirror/pool/main/p/python3.11/python3.11_3.11.2.orig.tar.gz 2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849"
  "python3.12_3.12.3.orig.tar.xz $ubuntu_mirror/pool/main/p/python3.12/python3.12_3.12.3.orig.tar.xz 56bfef1fdfc1221ce6720e43a661e3eb41785dd914ce99698d8c7896af4bdaa1"
)

say() { echo "build-test-image: $*" >&2; }

content_hash() {
  { sha256sum "${BASH_SOURCE[0]}" "$recipe"/* "$host_ca" | cut -d' ' -f1; echo "$arch"; } \
    | sha256sum | cut -c1-16
}

fetch_python_sources() {  # -> the folder holding every tarball of py_sources, each sha256-checked
  local entry file url sha dest
  mkdir -p "$cache/src"
  for entry in "${py_sources[@]}"; do
    read -r file url sha <<<"$entry"
    dest=$cache/src/$file
    if [[ ! -f $dest ]]; then
      say "downloading $url"
      curl -fsSL -o "$dest.part" "$url"
      mv "$dest.part" "$dest"
    fi
    echo "$sha  $dest" | sha256sum -c --quiet - >&2
  done
  echo "$cache/src"
}

make_base_image() {  # $1 = workdir, $2 = base image ref
  say "debootstrap --variant=minbase $suite (log: $1/debootstrap.log)"
  debootstrap --variant=minbase --arch="$arch" "$suite" "$1/rootfs" "$mirror" >"$1/debootstrap.log" 2>&1 \
    || { tail -20 "$1/debootstrap.log" >&2; return 1; }
  cat >"$1/rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
SOURCES
  install -D -m 0644 "$host_ca" "$1/rootfs/usr/local/share/wheelfarm/host-ca.crt"
  tar -C "$1/rootfs" -c . | podman import --quiet - "$2" >/dev/null
  rm -rf "$1/rootfs"
}

provision() {  # $1 = base image, $2 = container name, $3 = python source dir
  local ca=/usr/local/share/wheelfarm/host-ca.crt
  podman run --name "$2" --pull=never \
    -v "$recipe:/wf:ro" -v "$3:/wf-src:ro" \
    -e SSL_CERT_FILE=$ca -e PIP_CERT=$ca -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$1" bash /wf/provision.sh >&2
}

finish_image() {  # $1 = container name, $2 = final ref, $3 = content hash
  local ca=/etc/ssl/certs/ca-certificates.crt
  local what="OFFLINE TEST STAND-IN for manylinux (Debian bullseye, glibc 2.31); not a manylinux image"
  podman export "$1" | podman import --quiet \
    --change "LABEL org.opencontainers.image.title=wheelfarm-testimage" \
    --change "LABEL org.opencontainers.image.description=$what" \
    --change "LABEL org.wheelfarm.stand-in=true" \
    --change "LABEL org.wheelfarm.glibc=2.31" \
    --change "LABEL org.wheelfarm.content-hash=$3" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" --change "ENV PIP_DISABLE_PIP_VERSION_CHECK=1" \
    --change "ENV SSL_CERT_FILE=$ca" --change "ENV PIP_CERT=$ca" --change "ENV REQUESTS_CA_BUNDLE=$ca" \
    --change "ENV CC=clang" --change "ENV CXX=clang++" \
    --change "ENV AUDITWHEEL_ARCH=$(uname -m)" \
    --change "CMD [\"/bin/bash\"]" \
    - "$2" >/dev/null
}

cleanup() {  # $1 = container, $2 = base image, $3 = workdir
  podman rm -f "$1" >/dev/null 2>&1 || true
  podman rmi -f "$2" >/dev/null 2>&1 || true
  rm -rf "$3"
}

cold_build() {  # $1 = final ref, $2 = content hash
  local work base=localhost/wheelfarm-testimage-base:$2 ctr=wheelfarm-testimage-build-$2 src
  work=$(mktemp -d /var/tmp/wheelfarm-testimage.XXXXXX)
  trap "cleanup $ctr $base $work" EXIT  # also on failure (set -e)
  src=$(fetch_python_sources)
  cleanup "$ctr" "$base" ""
  make_base_image "$work" "$base"
  say "provisioning (apt, CPython 3.11 and 3.12 builds, pip tools)"
  provision "$base" "$ctr" "$src"
  finish_image "$ctr" "$1" "$2"
  trap - EXIT
  cleanup "$ctr" "$base" "$work"
}

main() {
  local hash ref tarball start=$SECONDS
  hash=$(content_hash)
  ref=localhost/wheelfarm-testimage:$hash
  tarball=$cache/wheelfarm-testimage-$hash.tar.gz
  mkdir -p "$cache"
  exec 9>"$cache/.build-test-image.lock"
  flock 9  # one build at a time per cache
  if podman image exists "$ref"; then
    say "present: $ref"
  elif [[ -f $tarball ]]; then
    say "loading $tarball"
    zcat "$tarball" | podman load >&2  # `podman load -i x.tar.gz` fails on podman 4.3
  elif [[ ${WHEELFARM_NO_COLD_BUILD:-0} == 1 ]]; then
    say "$ref is neither present nor cached, and WHEELFARM_NO_COLD_BUILD=1"
    exit 3
  else
    cold_build "$ref" "$hash"
    say "saving $tarball"
    podman save "$ref" | gzip -1 >"$tarball.part"
    mv "$tarball.part" "$tarball"
  fi
  say "done in $((SECONDS - start))s"
  echo "$ref"
}

main "$@"
