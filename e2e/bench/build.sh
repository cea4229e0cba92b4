#!/usr/bin/env bash
# Builds the benchmark's peers from their Go modules into versioned cache folders (a warm
# machine rebuilds nothing): kwok, which fakes nodes so that orchestration is measured
# rather than containerd.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.sh"
log() { printf '[bench-build] %s\n' "$*" >&2; }
if [ ! -x "$KWOK_BIN" ]; then
  log "go install sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION (about 6 min cold)"
  dir="$(dirname "$KWOK_BIN")"
  mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" GOFLAGS=-trimpath go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
log "kwok: $KWOK_BIN"
