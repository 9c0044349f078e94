#!/usr/bin/env bash
# Build the `conclave:local` image from binaries built on this machine: no registry is contacted.
#
# The image is `FROM scratch` around a root filesystem this script assembles: the three release
# binaries (`conclave`, `conclave-agent`, `conclave-sim`), exactly the shared libraries `ldd`
# lists for them plus the dynamic loader, the host's CA bundle (for real providers over HTTPS),
# and a minimal /etc (passwd, group, nsswitch.conf). Nothing else: no shell, no package manager.
#
# Usage: deploy/build-images.sh [--no-cargo]
#   --no-cargo            use the binaries already in $CONCLAVE_BIN_DIR as they are
# Environment:
#   CONCLAVE_IMAGE        image tag to build (default conclave:local)
#   CONCLAVE_BIN_DIR      where the release binaries are (default target/release)
#   CONCLAVE_BINARIES     binaries to put in the image (default "conclave conclave-agent conclave-sim")
#   CONCLAVE_DOCKER_CONTEXT  where the build context is assembled (default target/docker-context)
#   CONCLAVE_SKIP_CARGO=1 same as --no-cargo
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

image="${CONCLAVE_IMAGE:-conclave:local}"
bin_dir="${CONCLAVE_BIN_DIR:-$repo/target/release}"
binaries="${CONCLAVE_BINARIES:-conclave conclave-agent conclave-sim}"
context="${CONCLAVE_DOCKER_CONTEXT:-$repo/target/docker-context}"
skip_cargo="${CONCLAVE_SKIP_CARGO:-0}"
# The unprivileged user the containers run as (the distroless "nonroot" ids).
uid=65532
gid=65532

for arg in "$@"; do
  case "$arg" in
    --no-cargo) skip_cargo=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-images: unknown argument: $arg" >&2; exit 1 ;;
  esac
done

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
command -v ldd >/dev/null 2>&1 || die "ldd is needed to find the binaries' shared libraries"

# 1. The binaries. cargo is a no-op when they are up to date, so it always runs unless told not
#    to: a stale binary in an image would test yesterday's code.
if [ "$skip_cargo" != 1 ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (or pass --no-cargo with prebuilt binaries in $bin_dir)"
  log "cargo build --release --locked --workspace --bins"
  cargo build --release --locked --workspace --bins
fi
for b in $binaries; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing; build it with: cargo build --release --workspace --bins"
done

# 2. The root filesystem.
rm -rf "$context"
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/conclave" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$context/data"

# Copy one file into the rootfs at the path the binaries ask for (symlinks resolved: the image
# holds the real file under the requested name, so no link in the image can dangle).
copy_into_rootfs() {
  local path="$1"
  [ -e "$path" ] || die "$path (needed by the binaries) does not exist"
  mkdir -p "$rootfs$(dirname "$path")"
  cp -L "$path" "$rootfs$path"
}

declare -A libs=()
for b in $binaries; do
  cp -L "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  # A static binary has nothing to copy ("not a dynamic executable" / "statically linked").
  if ! ldd_out="$(ldd "$bin_dir/$b" 2>&1)"; then
    case "$ldd_out" in
      *"not a dynamic executable"*|*"statically linked"*) continue ;;
      *) die "ldd $bin_dir/$b failed: $ldd_out" ;;
    esac
  fi
  case "$ldd_out" in *"not found"*) die "ldd $bin_dir/$b: a library is missing:"$'\n'"$ldd_out" ;; esac
  while read -r line; do
    case "$line" in
      *"=> /"*) lib="${line#*=> }"; lib="${lib%% (*}" ;;          # libc.so.6 => /lib/.../libc.so.6 (0x...)
      /*) lib="${line%% (*}" ;;                                   # /lib64/ld-linux-x86-64.so.2 (0x...)
      *) continue ;;                                              # linux-vdso.so.1: the kernel's
    esac
    libs["$lib"]=1
  done <<<"$ldd_out"
done
for lib in "${!libs[@]}"; do
  copy_into_rootfs "$lib"
done
log "shared libraries: ${!libs[*]}"

# CA roots for providers over HTTPS (rustls reads the platform store: /etc/ssl/certs).
ca_bundle=""
for candidate in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
  if [ -f "$candidate" ]; then ca_bundle="$candidate"; break; fi
done
if [ -n "$ca_bundle" ]; then
  cp -L "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
else
  log "warning: no CA bundle found on this machine; HTTPS providers will fail inside the image"
fi

cat >"$rootfs/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
conclave:x:$uid:$gid:conclave:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<GROUP
root:x:0:
conclave:x:$gid:
nogroup:x:65534:
GROUP
# glibc's resolver: /etc/hosts first (docker writes it), then DNS (docker's embedded server).
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
touch "$context/data/.keep"

cp "$repo/deploy/Dockerfile" "$context/Dockerfile"

# 3. The image. Label it with the commit so `docker inspect` says what is inside.
revision="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$repo" status --porcelain 2>/dev/null | head -1)" ]; then revision="$revision-dirty"; fi
version="$("$bin_dir/conclave" --version 2>/dev/null | awk '{print $2}' || true)"
previous="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
log "docker build -t $image ($revision)"
docker build --quiet \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.version=${version:-unknown}" \
  -t "$image" "$context" >/dev/null
# The image the tag used to name is now untagged: remove it unless a container still uses it,
# so repeated builds (CI runs tests/docker/run.sh every time) do not pile up.
current="$(docker image inspect --format '{{.Id}}' "$image")"
if [ -n "$previous" ] && [ "$previous" != "$current" ] \
  && [ -z "$(docker image inspect --format '{{join .RepoTags ","}}' "$previous" 2>/dev/null)" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
log "built $image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
