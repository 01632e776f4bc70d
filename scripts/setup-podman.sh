#!/usr/bin/env bash
# Make `podman run` work as root on a fresh Debian 12 machine (CI runners, dev boxes).
#
# Idempotent: re-running installs nothing new and rewrites the same config.
# Engine quirks handled here (see DESIGN.md "Containers here"):
#   - crun (Debian's default OCI runtime for podman) fails on some hosts' cgroup setups: use runc.
#   - the default rlimits of the host can be refused inside the container: give explicit nofile/nproc.
#     A `--ulimit` flag on the command line REPLACES this whole list, so callers pass both.
# Usage: sudo scripts/setup-podman.sh        (WHEELFARM_SKIP_VERIFY=1 skips the final trivial run)
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "setup-podman.sh: run as root (sudo $0)" >&2
  exit 2
fi

packages=(podman runc debootstrap uidmap slirp4netns fuse-overlayfs skopeo)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p /etc/containers
conf=/etc/containers/containers.conf
want='# Written by wheelfarm scripts/setup-podman.sh
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"'
if [[ ! -f $conf ]] || [[ "$(cat "$conf")" != "$want" ]]; then
  [[ -f $conf ]] && cp "$conf" "$conf.bak.$(date +%s)"
  printf '%s\n' "$want" >"$conf"
  echo "wrote $conf" >&2
fi

# A registries.conf without unqualified-search registries makes short names fail fast offline.
if [[ ! -f /etc/containers/registries.conf ]]; then
  printf 'unqualified-search-registries = ["docker.io"]\n' >/etc/containers/registries.conf
fi

podman info --format \
  'podman {{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupsVersion}}' >&2

if [[ ${WHEELFARM_SKIP_VERIFY:-0} != 1 ]]; then
  # No registry may be reachable: verify with a tiny image made from the host's /bin/true and its libs.
  if ! podman image exists localhost/wheelfarm-smoke:1; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    for f in /bin/true $(ldd /bin/true | grep -o '/[^ ]*'); do
      mkdir -p "$tmp$(dirname "$f")"
      cp -L "$f" "$tmp$f"
    done
    tar -C "$tmp" -c . | podman import --quiet - localhost/wheelfarm-smoke:1 >/dev/null
  fi
  podman run --rm localhost/wheelfarm-smoke:1 /bin/true
  echo "podman run: ok" >&2
fi
