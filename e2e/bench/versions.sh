# Pinned versions of the benchmark's peers. Sourced by the bench scripts.
KWOK_VERSION=0.8.0            # sigs.k8s.io/kwok/cmd/kwok (go install), fake nodes
ARGO_VERSION=3.7.18           # github.com/argoproj/argo-workflows/v3 (workflow-controller)
MAESTRO_CACHE="${MAESTRO_CACHE:-$HOME/.cache/maestro}"
KWOK_BIN="$MAESTRO_CACHE/kwok-v$KWOK_VERSION/kwok"
ARGO_DIR="$MAESTRO_CACHE/argo-v$ARGO_VERSION"
ARGO_BIN="$ARGO_DIR/workflow-controller"
ARGO_CRDS="$ARGO_DIR/crds"
