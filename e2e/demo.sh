#!/usr/bin/env bash
# The demo: installs Maestro with its Helm chart, then runs the seed's delivery cycle, examples/acceptance-tests, against a local world:
# the war and the tests' git repository (a Maven project) from an HTTP server on this
# machine, EC2 from moto, and a Tomcat in the demo's namespace (examples/acceptance-tests/
# tomcat.yaml) standing in for the instance's; the tests run with the maven task.
# It follows the run's aggregated log, approves the sign-off gate through the CLI
# when the run waits for it, and shows that no instance is left running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/cluster/versions.sh"
bin="${CARGO_TARGET_DIR:-$MAESTRO_CACHE/target}/debug"
ns=maestro-demo
export PATH="$bin:$TOOLS_BIN:$PATH"   # kubectl-maestro becomes `kubectl maestro`
log() { printf '\n[demo] %s\n' "$*" >&2; }

if [ -d "$CLUSTER_DIR/pids" ]; then state="$CLUSTER_DIR"; else state=/tmp/maestro-demo; mkdir -p "$state/pids" "$state/logs"; fi
node_ip=${MAESTRO_NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="src") print $(i+1)}')}

kubectl create namespace maestro-system --dry-run=client -o yaml | kubectl apply --server-side -f - >/dev/null
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply --server-side -f - >/dev/null
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null

# stop_pid NAME: ends a process this script started on an earlier run.
stop_pid() {
  local f="$state/pids/$1.pid"
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then kill "$(cat "$f")" 2>/dev/null || true; sleep 1; fi
  rm -f "$f"
}
stop_pid maestro-operator   # an operator process of an older demo
stop_pid maestro-ui         # the web UI of an older demo

# Maestro as a user installs it: the Helm chart (CRDs, operator with 2 replicas and
# leader election, RBAC, the Task library, the approval policy, the dashboard). The
# operator watches the demo's namespace only, so it never competes with the operators of
# tests on the same cluster. The operator's leader installs the Task library.
log "installing Maestro with Helm (charts/maestro) into maestro-system"
# --take-ownership and --force-conflicts: on a cluster the e2e tests used, the CRDs and the
# approval policy already exist, applied by the tests' harness; the release adopts them.
helm_args=(charts/maestro -n maestro-system --take-ownership --force-conflicts --wait --timeout 5m)
(cd "$top" && helm upgrade --install maestro "${helm_args[@]}" --set watchNamespace="$ns" >/dev/null)
for _ in $(seq 1 60); do
  leader=$(kubectl get lease maestro-operator -n maestro-system -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [ -n "$leader" ] && break; sleep 1
done
echo "  leader: ${leader:-none yet}"
for _ in $(seq 1 60); do
  [ "$(kubectl get tasks -n maestro-system -l maestro.dev/library=standard -o name 2>/dev/null | wc -l)" -ge 9 ] && break; sleep 1
done
kubectl get deployment,tasks -n maestro-system

log "starting the outside world on $node_ip: an HTTP server (Maven repository, git, webhook) and moto (EC2)"
world="$state/demo-world"
rm -rf "$world"; mkdir -p "$world"
bash "$here/servers/make-world.sh" "$world"
stop_pid demo-sink
setsid python3 "$here/servers/sink.py" --root "$world" --host "$node_ip" --port 0 --ready-file "$world/.port" \
  > "$state/logs/demo-sink.log" 2>&1 < /dev/null &
echo $! > "$state/pids/demo-sink.pid"
for _ in $(seq 1 50); do [ -f "$world/.port" ] && break; sleep 0.2; done
sink="http://$node_ip:$(cat "$world/.port")"
if [ -f "$state/demo-moto.url" ]; then bash "$here/moto/moto.sh" stop "$(cat "$state/demo-moto.url")" >/dev/null 2>&1 || true; fi
moto=$(MOTO_HOST="$node_ip" bash "$here/moto/moto.sh" start | tail -n1)
echo "$moto" > "$state/demo-moto.url"
echo "  artifacts, git and webhook: $sink"
echo "  EC2 API (moto):                      $moto"

for _ in $(seq 1 60); do kubectl -n "$ns" get serviceaccount default >/dev/null 2>&1 && break; sleep 1; done
kubectl -n "$ns" create secret generic aws-credentials --from-literal=AWS_ACCESS_KEY_ID=demo \
  --from-literal=AWS_SECRET_ACCESS_KEY=demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The Tomcat's deploy user: a password of this demo's own, by reference only.
if ! kubectl -n "$ns" get secret tomcat-manager >/dev/null 2>&1; then
  kubectl -n "$ns" create secret generic tomcat-manager --from-literal=TOMCAT_MANAGER_USER=deployer \
    --from-literal=TOMCAT_MANAGER_PASSWORD="$(openssl rand -hex 16)" >/dev/null
fi
kubectl apply -n "$ns" -f "$top/examples/acceptance-tests/"
kubectl wait -n "$ns" --for=condition=Ready composition/acceptance-tests composition/notify-qa --timeout=60s >/dev/null
log "waiting for the Tomcat (Debian's tomcat10, standing in for the EC2 instance's)"
kubectl rollout status -n "$ns" deployment/tomcat --timeout=180s
tomcat="http://$(kubectl get svc tomcat -n "$ns" -o jsonpath='{.spec.clusterIP}'):8080"
echo "  Tomcat (the instance moto records maps to this Service): $tomcat"

run=$(kubectl maestro run acceptance-tests -n "$ns" -p version=1.4.2 -p artifactRepo="$sink" -p tomcatUrl="$tomcat" \
  -p testsRepo="$sink/qa/acceptance.git" -p awsEndpoint="$moto" -p notifyUrl="$sink/notify" \
  | sed -n 's#^compositionrun/\([^ ]*\) created#\1#p')
[ -n "$run" ] || { log "could not start a run"; exit 1; }
# The web UI beside the log: `kubectl maestro ui` as you (this kubeconfig), left running.
setsid kubectl maestro ui -n "$ns" --port 0 --no-open >"$state/logs/maestro-ui.log" 2>&1 </dev/null &
echo $! >"$state/pids/maestro-ui.pid"
ui_url=""
for _ in $(seq 1 20); do
  ui_url=$(sed -n 's/^Maestro UI: //p' "$state/logs/maestro-ui.log" | head -n1)
  [ -n "$ui_url" ] && break
  sleep 0.5
done
if [ -n "$ui_url" ]; then
  echo "  Web UI: ${ui_url}#/runs/$ns/$run   (kubectl maestro ui, left running; stop it: kill $(cat "$state/pids/maestro-ui.pid"))"
else
  echo "  Web UI: did not start; see $state/logs/maestro-ui.log"
fi
log "started $run; following its aggregated log"

kubectl maestro logs "$run" -f -n "$ns" &
follower=$!
for _ in $(seq 1 300); do
  phase=$(kubectl get crun -n "$ns" "$run" -o jsonpath='{.status.phase}')
  case "$phase" in
    WaitingApproval)
      sleep 1
      log "the run waits at sign-off; approving as $(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')"
      kubectl maestro approve "$run" sign-off -n "$ns"
      break ;;
    Succeeded|Failed|Cancelled|Invalid) break ;;
  esac
  sleep 1
done
wait "$follower" || true

kubectl maestro describe "$run" -n "$ns"
phase=$(kubectl get crun -n "$ns" "$run" -o jsonpath='{.status.phase}')
live=$("$MAESTRO_CACHE/moto-v1/venv/bin/python" -c '
import boto3, sys
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="demo", aws_secret_access_key="demo")
print(sum(1 for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
          if i["State"]["Name"] not in ("terminated", "shutting-down")))' "$moto")
log "run $run ended $phase; EC2 instances still running in moto: $live"
log "the cluster stays up: source $CLUSTER_DIR/env, then kubectl get crun -n $ns; make cluster-down ends it all"
[ "$phase" = Succeeded ] && [ "$live" = 0 ]
