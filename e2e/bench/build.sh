#!/usr/bin/env bash
# Builds the benchmark's peers from their Go modules into versioned cache folders (a warm
# machine rebuilds nothing):
# - kwok, which fakes nodes so that orchestration is measured rather than containerd;
# - with `argo`, Argo Workflows' workflow-controller and its CRDs (only `make bench` needs
#   them; the smoke mode in `make test` measures Maestro and the bare client alone).
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
if [ "${1:-}" = argo ] && [ ! -x "$ARGO_BIN" ]; then
  # The commands are not installable with `go install` (the module has replace
  # directives), so a wrapper module requires Argo and builds its controller.
  log "building argo-workflows v$ARGO_VERSION workflow-controller (about 10 min cold)"
  work="$ARGO_DIR.tmp"
  rm -rf "$work" && mkdir -p "$work/src"
  (
    cd "$work/src"
    go mod init maestro.dev/bench-argo >/dev/null 2>&1
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/argoproj/argo-workflows/v3/cmd/workflow-controller"
GO
    go get "github.com/argoproj/argo-workflows/v3@v$ARGO_VERSION"
    go get "github.com/argoproj/argo-workflows/v3/cmd/workflow-controller@v$ARGO_VERSION"
    GOFLAGS=-trimpath go build -ldflags "-s -w" -o "$work/workflow-controller" \
      github.com/argoproj/argo-workflows/v3/cmd/workflow-controller
    src="$(go list -m -f '{{.Dir}}' "github.com/argoproj/argo-workflows/v3")"
    mkdir -p "$work/crds"
    cp "$src"/manifests/base/crds/minimal/*.yaml "$work/crds/"
    chmod -R u+w "$work/crds"
  )
  rm -rf "$work/src"
  rm -rf "$ARGO_DIR" && mv "$work" "$ARGO_DIR"
fi
[ "${1:-}" = argo ] && log "argo: $ARGO_BIN"
exit 0
