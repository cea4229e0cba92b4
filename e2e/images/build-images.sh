#!/usr/bin/env bash
# Builds Maestro's images (agent, operator, the pod sandbox's pause image, and the example
# plugins of examples/plugins/) without Docker, as docker-archive tars, and imports them
# into the local cluster's containerd.
#
#   e2e/images/build-images.sh [--no-import]
#   e2e/images/build-images.sh --pause-only [--no-import]   only the pause image: the cluster
#                   needs it before its first pod, long before the Rust binaries exist
#   e2e/images/build-images.sh --prepare   only warm the cache (base layers, pause binary):
#                   needs no Rust binaries, so it can run beside cargo build
#
# Env: BIN_DIR      where maestro-agent, maestro-operator and maestro-ui are read from
#                   (default ${CARGO_TARGET_DIR:-$HOME/.cache/maestro/target}/debug)
#      CONTAINERD_ADDRESS  containerd socket to import into; unset: only build
#      MAESTRO_AGENT_IMAGE, MAESTRO_OPERATOR_IMAGE, MAESTRO_UI_IMAGE, MAESTRO_PAUSE_IMAGE  image names
#      MAESTRO_CACHE  cache root (default $HOME/.cache/maestro)
#      DEBIAN_MIRROR  (default http://deb.debian.org/debian)
#      MAESTRO_EXTRA_CA_DIR  CA certificates (*.crt) this machine trusts beyond Debian's, added
#                   to every base (default /usr/local/share/ca-certificates)
#
# The images are defined by agent-image/Containerfile, operator/controller/Containerfile,
# operator/ui/Containerfile,
# e2e/images/pause/Containerfile and examples/plugins/NAME/Containerfile (built from its
# own folder as localhost/maestro/plugin-NAME:dev); oci_archive.py reads their final
# stages, so this script holds no package list, user or entrypoint of its own. No registry is reachable from the
# project's machines, so the base image is not pulled: it is a debootstrap minbase rootfs
# (what debian:*-slim is made from) with the stage's packages, cached by package list
# because a cold debootstrap takes minutes. Archives land in $MAESTRO_CACHE/images-v1/out.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# A new layout of this folder gets a new version (images-v2); a change of what goes into a
# base layer (debootstrap flags, trim_rootfs) bumps "recipe-N" in build_base_layer instead.
cache="${MAESTRO_CACHE:-$HOME/.cache/maestro}/images-v1"
out="$cache/out"
bin_dir="${BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/maestro/target}/debug}"
agent_image="${MAESTRO_AGENT_IMAGE:-localhost/maestro/agent:dev}"
operator_image="${MAESTRO_OPERATOR_IMAGE:-localhost/maestro/operator:dev}"
ui_image="${MAESTRO_UI_IMAGE:-localhost/maestro/ui:dev}"
pause_image="${MAESTRO_PAUSE_IMAGE:-localhost/maestro/pause:3.10}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
extra_ca_dir="${MAESTRO_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
oci=(python3 "$here/oci_archive.py")
# IMAGE=FOLDER (from the repository root) of the images of real tools, built like plugins.
tool_images=(
  "localhost/maestro/maven:dev=operator/library/images/maven"
  "localhost/maestro/tomcat:dev=e2e/images/tomcat"
)

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

do_import=1 mode=all
for arg in "$@"; do
  case "$arg" in
    --no-import) do_import=0 ;;
    --pause-only) mode=pause ;;
    --prepare) mode=prepare ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (usage: $0 [--no-import] [--pause-only|--prepare])" ;;
  esac
done

mkdir -p "$cache" "$out"
# Two builds at once (a test run while a developer rebuilds) would debootstrap into the
# same folder; the second waits instead.
exec 9>"$cache/.lock"
flock 9

# Deletes a debootstrap target. debootstrap mounts proc and sys inside it and leaves them
# mounted when it fails, so unmount first and never let rm cross into another filesystem.
remove_rootfs() {
  local dir=$1
  [ -d "$dir" ] || return 0
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0 "/", d) == 1' | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$dir"
}

# Sets BASE_LAYER to the cached layer tar of the FROM image + apt packages of a
# Containerfile's final stage, building it on a cold machine.
build_base_layer() {
  local containerfile=$1 spec suite pkgs key dir work started
  spec=$("${oci[@]}" base-spec "$containerfile")
  suite=${spec%% *}
  pkgs=${spec#"$suite"}; pkgs=${pkgs# }
  key=$(printf '%s\n' "recipe-1" "$suite" "$mirror" "$pkgs" | sha256sum | cut -c1-16)
  # The machine's own trust anchors (a TLS-intercepting egress proxy's CA) go into the base
  # too, or step pods could not reach what this machine reaches (Maven Central); the key
  # changes with them, and stays as it was on a machine without any.
  local extra_cas=() ca_sum=""
  for ca in "$extra_ca_dir"/*.crt; do [ -f "$ca" ] && extra_cas+=("$ca"); done
  if [ ${#extra_cas[@]} -gt 0 ]; then
    ca_sum=$(cat "${extra_cas[@]}" | sha256sum | cut -c1-16)
    key=$(printf '%s\n' "$key" "extra-ca-$ca_sum" | sha256sum | cut -c1-16)
  fi
  dir="$cache/base-$suite-$key"
  BASE_LAYER="$dir/layer.tar"
  if [ -f "$BASE_LAYER" ]; then
    log "base $suite [$pkgs]: cached ($BASE_LAYER)"
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
  log "base $suite [$pkgs]: debootstrap from $mirror (cold: a few minutes)"
  started=$(date +%s)
  work="$dir.work"
  remove_rootfs "$work"
  mkdir -p "$work"
  trap 'remove_rootfs "'"$work"'"' EXIT
  # --cache-dir: the agent's and the operator's bases share most packages; download once.
  mkdir -p "$cache/debs"
  if ! debootstrap --variant=minbase --include="${pkgs// /,}" --cache-dir="$cache/debs" \
      "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$work/rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  if [ ${#extra_cas[@]} -gt 0 ] && [ -x "$work/rootfs/usr/sbin/update-ca-certificates" ]; then
    mkdir -p "$work/rootfs/usr/local/share/ca-certificates"
    cp "${extra_cas[@]}" "$work/rootfs/usr/local/share/ca-certificates/"
    # Its hooks rebuild the JDK's trust store too (ca-certificates-java runs java).
    mount -t proc proc "$work/rootfs/proc"
    chroot "$work/rootfs" update-ca-certificates >"$work/update-ca.log" 2>&1 || {
      umount "$work/rootfs/proc"; cat "$work/update-ca.log" >&2; die "update-ca-certificates failed"; }
    umount "$work/rootfs/proc"
    log "base $suite: added ${#extra_cas[@]} CA certificates of this machine ($extra_ca_dir)"
  fi
  trim_rootfs "$work/rootfs"
  "${oci[@]}" tar-rootfs "$work/rootfs" "$work/layer.tar"
  mkdir -p "$dir"
  printf 'suite=%s\npackages=%s\nmirror=%s\nseconds=%s\nbuilt=%s\n' \
    "$suite" "$pkgs" "$mirror" "$(( $(date +%s) - started ))" "$(date -u +%FT%TZ)" >"$dir/info"
  mv "$work/layer.tar" "$BASE_LAYER"
  remove_rootfs "$work"
  trap - EXIT
  log "base $suite [$pkgs]: built in $(( $(date +%s) - started ))s, $(du -h "$BASE_LAYER" | cut -f1)"
}

# What debian:*-slim leaves out, plus what debootstrap copies from the host.
trim_rootfs() {
  local r=$1
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
    "$r"/var/lib/dpkg/*-old "$r"/var/cache/ldconfig/aux-cache "$r"/var/log/* \
    "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian "$r"/usr/share/linda
  # Keep the copyright files: the licenses of what the image ships.
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  # The host's resolver and name: the runtime mounts the pod's own over these paths.
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
  # Per-machine identity; systemd-less containers never read it, and it must not be shared.
  [ -f "$r/etc/machine-id" ] && : >"$r/etc/machine-id"
  return 0
}

# Sets PAUSE_BIN to the cached static pause binary, compiled with the flags of
# e2e/images/pause/Containerfile's build stage.
build_pause() {
  local src="$here/pause/pause.c" key dir
  command -v gcc >/dev/null || die "gcc is missing: apt-get install -y gcc libc6-dev"
  key=$( { cat "$src"; gcc --version | head -n1; } | sha256sum | cut -c1-16)
  dir="$cache/pause-$key"
  PAUSE_BIN="$dir/pause"
  [ -x "$PAUSE_BIN" ] && return 0
  mkdir -p "$dir"
  gcc -static -Os -Wall -Wextra -o "$dir/pause.tmp" "$src"
  strip "$dir/pause.tmp"
  mv "$dir/pause.tmp" "$PAUSE_BIN"
  log "pause: compiled ($(du -h "$PAUSE_BIN" | cut -f1))"
}

if [ "$mode" = prepare ]; then
  build_base_layer "$repo/agent-image/Containerfile"
  build_base_layer "$repo/operator/controller/Containerfile"
  for cf in "$repo"/examples/plugins/*/Containerfile; do
    if [ -f "$cf" ]; then build_base_layer "$cf"; fi
  done
  for entry in "${tool_images[@]}"; do build_base_layer "$repo/${entry#*=}/Containerfile"; done
  build_pause
  exit 0
fi

archives=() names=()
if [ "$mode" = all ]; then
  for b in maestro-agent maestro-operator maestro-ui; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: cargo build -p maestro-agent -p maestro-operator -p maestro-ui (or set BIN_DIR)"
  done

  build_base_layer "$repo/agent-image/Containerfile"
  "${oci[@]}" build "$repo/agent-image/Containerfile" --base-layer "$BASE_LAYER" \
    --file "$bin_dir/maestro-agent" --tag "$agent_image" --out "$out/agent.tar" >&2
  archives+=("$out/agent.tar") names+=("$agent_image")

  build_base_layer "$repo/operator/controller/Containerfile"
  "${oci[@]}" build "$repo/operator/controller/Containerfile" --base-layer "$BASE_LAYER" \
    --file "$bin_dir/maestro-operator" --tag "$operator_image" --out "$out/operator.tar" >&2
  archives+=("$out/operator.tar") names+=("$operator_image")

  # The web UI's in-cluster server (the chart's ui.enabled): the operator's base.
  build_base_layer "$repo/operator/ui/Containerfile"
  "${oci[@]}" build "$repo/operator/ui/Containerfile" --base-layer "$BASE_LAYER" \
    --file "$bin_dir/maestro-ui" --tag "$ui_image" --out "$out/ui.tar" >&2
  archives+=("$out/ui.tar") names+=("$ui_image")

  # Example plugin images: no Rust binary in them; a plain COPY takes the plugin's files
  # from the Containerfile's folder. The tests run them with imagePullPolicy IfNotPresent.
  for cf in "$repo"/examples/plugins/*/Containerfile; do
    [ -f "$cf" ] || continue
    plugin=$(basename "$(dirname "$cf")")
    build_base_layer "$cf"
    "${oci[@]}" build "$cf" --base-layer "$BASE_LAYER" \
      --tag "localhost/maestro/plugin-$plugin:dev" --out "$out/plugin-$plugin.tar" >&2
    archives+=("$out/plugin-$plugin.tar") names+=("localhost/maestro/plugin-$plugin:dev")
  done

  # Tool images: the library maven Task's, and the Tomcat the acceptance tests deploy to.
  for entry in "${tool_images[@]}"; do
    tool_image=${entry%%=*} tool_dir="$repo/${entry#*=}"
    tool=$(basename "$tool_dir")
    build_base_layer "$tool_dir/Containerfile"
    "${oci[@]}" build "$tool_dir/Containerfile" --base-layer "$BASE_LAYER" \
      --tag "$tool_image" --out "$out/$tool.tar" >&2
    archives+=("$out/$tool.tar") names+=("$tool_image")
  done
fi

build_pause
"${oci[@]}" build "$here/pause/Containerfile" \
  --file "$PAUSE_BIN" --tag "$pause_image" --out "$out/pause.tar" >&2
archives+=("$out/pause.tar") names+=("$pause_image")

# The archives on stdout, one a line, whether imported or not: callers may load them
# elsewhere (another containerd, kind load image-archive).
printf '%s\n' "${archives[@]}"
if [ "$do_import" = 0 ] || [ -z "${CONTAINERD_ADDRESS:-}" ]; then
  [ "$do_import" = 1 ] && log "CONTAINERD_ADDRESS is not set: built only"
  exit 0
fi

ctr_=(ctr --address "$CONTAINERD_ADDRESS" -n k8s.io)
for a in "${archives[@]}"; do
  # Unpack now (the default, spelled out): the kubelet's first pod would otherwise wait
  # for the snapshot, and a broken layer shows up here rather than in a pod event.
  "${ctr_[@]}" images import --no-unpack=false "$a" >&2
done
present=$("${ctr_[@]}" images ls -q)
for n in "${names[@]}"; do
  grep -qxF "$n" <<<"$present" || die "$n is not in containerd after the import"
done
log "imported into $CONTAINERD_ADDRESS: ${names[*]}"
