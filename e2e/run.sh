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

# Every e2e test binary (one per area), in two lanes at once: the tests wait on the
# cluster far more than they compute, and each lane runs a binary's tests two at a time.
# The lanes are balanced by a warm run's durations (about 7 min each). Then, alone: helm
# installs and removes cluster-wide objects (the approval policy, the chart's CRDs), and
# the chaos binaries restart the control plane and the kubelet; a test beside them would
# fail for their reasons. --no-fail-fast: one failing area does not hide the others.
lane_a=(acceptance triggers leader observability plugins approvals storage smoke)
lane_b=(operator_core agents ui bench_smoke hostile rerun api_validation)
alone=(helm chaos_real_node chaos_smoke)

# run_lane NAME BINARY...: those test binaries, their output prefixed with NAME.
run_lane() {
  local name=$1; shift
  local args=()
  for t in "$@"; do args+=(--test "$t"); done
  cargo test -p maestro-e2e --no-fail-fast "${args[@]}" -- --test-threads=2 2>&1 |
    sed -u "s/^/[$name] /"
}

run_e2e() {
  # A new binary must be given a lane: never skip one silently.
  local listed=" ${lane_a[*]} ${lane_b[*]} ${alone[*]} " missing=()
  for f in "$here"/tests/*.rs; do
    t=$(basename "$f" .rs)
    case "$listed" in *" $t "*) ;; *) missing+=("$t") ;; esac
  done
  [ ${#missing[@]} -eq 0 ] || { echo "[e2e] not in any lane of e2e/run.sh: ${missing[*]}" >&2; exit 1; }
  # Build once, before the lanes start, so they only run.
  cargo test -p maestro-e2e --no-run
  # The harness's own unit tests, and the binaries' (the workspace's `make unit` leaves e2e out).
  cargo test -p maestro-e2e --lib --bins
  local failed=0
  run_lane e2e-a "${lane_a[@]}" & local a=$!
  run_lane e2e-b "${lane_b[@]}" & local b=$!
  wait "$a" || failed=1
  wait "$b" || failed=1
  run_lane e2e-alone "${alone[@]}" || failed=1
  [ $failed -eq 0 ] || { echo "[e2e] some e2e tests failed: see the lines above" >&2; exit 1; }
}

case "$mode" in
  all|tests)
    # The bench's smoke test needs kwok (built once, then cached).
    bash "$here/bench/build.sh"
    run_e2e
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
