#!/usr/bin/env bash
# The `chroot` container engine: run a command inside a root folder (an unpacked build root or image) in
# fresh mount and PID namespaces, for machines without podman/docker (e.g. a GPU runner that only has
# unshare and chroot). Bind mounts vanish with the namespace; the command's processes die with it.
#
#   chroot-run.sh ROOT [-m SRC:DST[:ro]]... [-e NAME]... [-w DIR] -- CMD [ARG...]
#
#   -m  bind-mount host SRC at DST inside ROOT (":ro" read-only); DST is created in ROOT when missing
#   -e  pass NAME with its value from this environment (values never appear on a command line)
#   -w  working directory inside ROOT (default /)
# The environment inside is ROOT/etc/wheelfarm/image.env (KEY=VALUE lines, like an image's ENV) plus -e.
# Needs root (or a user namespace with mount rights), util-linux unshare, chroot.
set -euo pipefail
if [[ -z ${WHEELFARM_CHROOT_NS:-} || $$ -ne 1 ]]; then  # not yet PID 1 of our own namespaces (an inherited
  # WHEELFARM_CHROOT_NS must never make the mounts below land in the caller's namespace)
  # --kill-child: if this script is killed, everything started inside is killed too (no stray compilers)
  exec unshare --mount --pid --fork --kill-child --propagation private env WHEELFARM_CHROOT_NS=1 bash "$0" "$@"
fi
usage() { echo "usage: chroot-run.sh ROOT [-m SRC:DST[:ro]]... [-e NAME]... [-w DIR] -- CMD..." >&2; exit 2; }
(($#)) || usage
root=$1; shift
[[ -x $root/bin/sh ]] || { echo "chroot-run: $root is not a root folder (no bin/sh)" >&2; exit 2; }
mounts=() names=() workdir=/
while (($#)); do
  case $1 in
    -m) mounts+=("$2"); shift 2 ;;
    -e) names+=("$2"); shift 2 ;;
    -w) workdir=$2; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
(($#)) || usage

bind() {  # $1 = host path, $2 = path inside the root, $3 = "ro" or ""
  local dst=$root$2 resolved
  resolved=$(realpath -m "$dst")
  if [[ $resolved != "$(realpath -m "$root")"/* ]]; then  # e.g. the root's /usr/local/cuda -> /etc/alternatives/..
    [[ ${4:-} == optional ]] && return 0
    echo "chroot-run: $2 resolves outside the root ($resolved): refusing to mount there" >&2; exit 2
  fi
  if [[ -d $1 ]]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; [[ -e $dst ]] || : >"$dst"; fi
  mount --rbind "$1" "$dst"
  [[ $3 != ro ]] || mount -o remount,bind,ro "$dst"
}
mount -t proc proc "$root/proc"
bind /dev /dev ""
bind /sys /sys ro
[[ -f /etc/resolv.conf ]] && bind /etc/resolv.conf /etc/resolv.conf ro optional
for spec in "${mounts[@]}"; do
  IFS=: read -r src dst mode <<<"$spec"
  [[ -e $src ]] || { echo "chroot-run: mount source $src does not exist" >&2; exit 2; }
  bind "$src" "$dst" "${mode:-}"
done

env_args=()
if [[ -f $root/etc/wheelfarm/image.env ]]; then
  while IFS= read -r line; do [[ -z $line || $line == \#* ]] || env_args+=("$line"); done <"$root/etc/wheelfarm/image.env"
fi
env_args+=("HOME=/root")
for name in "${names[@]}"; do
  [[ -n ${!name+x} ]] && env_args+=("$name=${!name}")
done
exec chroot "$root" /usr/bin/env -i "${env_args[@]}" /bin/bash -c 'cd "$0" && exec "$@"' "$workdir" "$@"
