#!/usr/bin/env bash
# Builds the runner image of conclave's command tool in docker mode
# (`command_line_execution_mode: docker`), FROM scratch, from a root filesystem made on this
# machine: no registry is pulled from.
#
#   deploy/runner-image/build.sh [--flavour minimal|full] [--tag IMAGE] [--suite bookworm] [--mirror URL]
#
# Flavours:
#   minimal  Debian's `busybox-static` package: one static busybox and a symlink per applet
#            (sh, ls, cat, grep, sed, awk, wget, ...). About 2 MB, built in seconds; the tests
#            use it. Default tag: conclave-runner:minimal.
#   full     A Debian root filesystem made with debootstrap (variant minbase) plus python3,
#            for real use. A few hundred MB, a few minutes; needs root. Default tag:
#            conclave-runner:full.
#
# What it needs (installed with apt-get when missing and allowed): docker, dpkg-deb, apt-get
# (minimal); debootstrap (full). Then point a config at the image:
#   command_line_execution_mode: docker
#   command_line_docker_image: conclave-runner:minimal
set -euo pipefail

flavour=minimal
tag=""
suite=bookworm
mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour|--flavor) flavour="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --suite) suite="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
  esac
done
case "$flavour" in
  minimal|full) ;;
  *) echo "error: --flavour must be minimal or full, not \`$flavour\`" >&2; exit 2 ;;
esac
tag="${tag:-conclave-runner:$flavour}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else "$@"; fi; }
apt_updated=0
apt_update_once() { if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi; }
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "runner-image: installing $2 (for $1)"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is still missing after installing $2" >&2; exit 1; }
}

if ! command -v docker >/dev/null 2>&1; then
  echo "error: the docker CLI is not installed; install Docker (e.g. \`apt-get install docker.io\`) and start its engine" >&2
  exit 1
fi
if ! timeout 30 docker info >/dev/null 2>&1; then
  echo "error: no Docker engine answers \`docker info\`; start it (e.g. \`systemctl start docker\`)" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/conclave-runner.XXXXXX")"
cleanup() { as_root rm -rf "$work" 2>/dev/null || rm -rf "$work"; }
trap cleanup EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"

build_minimal() {
  need dpkg-deb dpkg
  local deb
  # `apt-get download` fetches the package without installing it (no root needed once the
  # package lists exist).
  if ! (cd "$work" && apt-get download -qq busybox-static >/dev/null 2>&1); then
    apt_update_once
    (cd "$work" && apt-get download -qq busybox-static)
  fi
  deb="$(ls "$work"/busybox-static_*.deb)"
  dpkg-deb -x "$deb" "$work/pkg"
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/root" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
  chmod 1777 "$rootfs/tmp"
  cp "$work/pkg/bin/busybox" "$rootfs/bin/busybox"
  # One symlink per applet, all in /bin (PATH in the image is /bin).
  local applet
  for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  cat >"$work/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/bin LANG=C.UTF-8
CMD ["/bin/sh"]
DOCKERFILE
}

build_full() {
  need debootstrap debootstrap
  if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
    echo "error: the full flavour runs debootstrap, which needs root (or passwordless sudo)" >&2
    exit 1
  fi
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror"
  as_root rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
  cat >"$work/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["/bin/sh"]
DOCKERFILE
}

"build_$flavour"
# The legacy builder needs nothing but the context: FROM scratch pulls nothing.
if ! DOCKER_BUILDKIT=0 docker build -q -t "$tag" -f "$work/Dockerfile" "$work" >/dev/null 2>"$work/build.log"; then
  cat "$work/build.log" >&2
  echo "error: docker build of $tag failed (log above)" >&2
  exit 1
fi
echo "runner-image: built $tag ($(docker image inspect --format '{{.Size}}' "$tag") bytes, flavour $flavour)"
