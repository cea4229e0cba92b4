#!/usr/bin/env bash
# The demo: installs Maestro's CRDs, the Task library and the approval policy, starts the
# operator (a local process, its PID kept with the cluster's so cluster-down ends it),
# applies examples/hello, runs it with the CLI and follows its aggregated log to the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/cluster/versions.sh"
bin="${CARGO_TARGET_DIR:-$MAESTRO_CACHE/target}/debug"
ns=maestro-demo
export PATH="$bin:$TOOLS_BIN:$PATH"   # kubectl-maestro becomes `kubectl maestro`
log() { printf '[demo] %s\n' "$*" >&2; }

log "installing CRDs, the Task library and the approval policy"
kubectl apply --server-side --force-conflicts -f "$top/crds/" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace maestro-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply --server-side --force-conflicts -n maestro-system -f "$top/charts/maestro/files/library/" >/dev/null
kubectl apply --server-side --force-conflicts -f "$top/charts/maestro/files/policies/" >/dev/null

# The operator runs as a local process here; the Helm chart runs it in the cluster.
if [ -d "$CLUSTER_DIR/pids" ]; then pids="$CLUSTER_DIR/pids"; logs="$CLUSTER_DIR/logs"; else pids=/tmp; logs=/tmp; fi
if [ -f "$pids/maestro-operator.pid" ] && kill -0 "$(cat "$pids/maestro-operator.pid")" 2>/dev/null; then
  kill "$(cat "$pids/maestro-operator.pid")" 2>/dev/null || true
  sleep 1
fi
setsid "$bin/maestro-operator" --library-namespace maestro-system > "$logs/maestro-operator.log" 2>&1 < /dev/null &
echo $! > "$pids/maestro-operator.pid"
log "operator started (pid $(cat "$pids/maestro-operator.pid"), log $logs/maestro-operator.log)"

kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl wait -n "$ns" --for=jsonpath='{.metadata.name}'=default serviceaccount/default --timeout=60s >/dev/null
kubectl apply -n "$ns" -f "$top/examples/hello/composition.yaml"
kubectl wait -n "$ns" --for=condition=Ready composition/hello --timeout=60s >/dev/null

run=$(kubectl maestro run hello -p who=maestro -n "$ns" | sed -n 's#^compositionrun/\([^ ]*\) created#\1#p')
[ -n "$run" ] || { log "could not start a run"; exit 1; }
log "started $run; following its log"
kubectl maestro logs "$run" -f -n "$ns"
echo
kubectl maestro describe "$run" -n "$ns"
phase=$(kubectl get crun -n "$ns" "$run" -o jsonpath='{.status.phase}')
log "run $run ended: $phase"
log "the cluster stays up: source $CLUSTER_DIR/env, then try kubectl get crun -n $ns; make cluster-down ends it"
[ "$phase" = Succeeded ]
