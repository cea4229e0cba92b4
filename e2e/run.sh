#!/usr/bin/env bash
# Runs the end-to-end tests or the demo against a cluster. With KUBECONFIG unset it boots
# the local cluster and, for the tests, always takes it down again, also on failure.
#   run.sh all    cluster-up, images, e2e tests, cluster-down
#   run.sh tests  e2e tests against the running cluster
#   run.sh demo   cluster-up (left running), images, the demo
#   run.sh bench  cluster-up (left running), images, the benchmark (BENCH_ARGS=--smoke: tiny)
#   run.sh chaos  cluster-up (left running), images, the chaos suite (CHAOS_ARGS=--smoke: short)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/cluster/versions.sh"
mode=${1:-all}

use_local_cluster() {
  if [ -n "${KUBECONFIG:-}" ]; then
    echo "[e2e] KUBECONFIG is set ($KUBECONFIG): using that cluster" >&2
    return 1
  fi
  return 0
}

started_here=0
if [ "$mode" != tests ] && use_local_cluster; then
  bash "$here/cluster/install-deps.sh"
  bash "$here/cluster/build.sh"
  if [ "$mode" = all ]; then
    started_here=1
    trap 'bash "$here/cluster/down.sh"' EXIT
  fi
  bash "$here/cluster/up.sh" >/dev/null
fi
if [ -z "${KUBECONFIG:-}" ] && [ -f "$CLUSTER_DIR/env" ]; then
  # shellcheck disable=SC1091
  . "$CLUSTER_DIR/env"
fi
[ -n "${KUBECONFIG:-}" ] || { echo "[e2e] no cluster: run make cluster-up or set KUBECONFIG" >&2; exit 1; }
export PATH="$TOOLS_BIN:$PATH"

cd "$top"
if [ "$mode" != tests ]; then
  cargo build --workspace --bins
  bash "$here/images/build-images.sh"
fi

case "$mode" in
  all|tests)
    # The bench's smoke test needs kwok (built once, then cached).
    bash "$here/bench/build.sh"
    # One test binary per area; tests in it share the cluster, so keep them few at a time.
    # --no-fail-fast: one failing area does not hide the others' results.
    cargo test -p maestro-e2e --no-fail-fast -- --test-threads=2
    ;;
  bench)
    # Argo only when it is measured (`BENCH_ARGS=--smoke` leaves it out).
    case " ${BENCH_ARGS:-} " in *" --smoke "*) bash "$here/bench/build.sh" ;; *) bash "$here/bench/build.sh" argo ;; esac
    # A release build of the operator, as users run it; the bench drives it from beside.
    cargo build --release -p maestro-operator -p maestro-e2e --bins
    MAESTRO_E2E_OPERATOR_LOG_LEVEL=info "${CARGO_TARGET_DIR:-$top/target}/release/maestro-bench" ${BENCH_ARGS:-}
    ;;
  chaos)
    bash "$here/bench/build.sh"
    "${CARGO_TARGET_DIR:-$top/target}/debug/maestro-chaos" ${CHAOS_ARGS:-}
    ;;
  demo)
    bash "$here/demo.sh"
    ;;
esac
[ $started_here -eq 1 ] && echo "[e2e] taking the local cluster down" >&2
exit 0
