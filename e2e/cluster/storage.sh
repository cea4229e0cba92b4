#!/usr/bin/env bash
# Gives the local cluster dynamic volume provisioning: rancher's local-path-provisioner
# (built by build.sh) runs as a host process with the admin kubeconfig, like the other
# components, and makes a directory under $CLUSTER_DIR/volumes for each PersistentVolumeClaim
# of the default StorageClass maestro-local. up.sh runs this once the node is Ready;
# down.sh stops the provisioner by its PID and removes the volumes with the rest of
# $CLUSTER_DIR. Safe to run again on a running cluster: it re-applies the objects and
# restarts the provisioner (which reads its ConfigMap only when it starts).
#
# The provisioner creates and removes each volume's directory with a short-lived helper pod
# in the namespace local-path-storage, from the agent image (nothing can be pulled here):
# `make images` imports it after cluster-up, which is early enough, since helper pods only
# start when a claim is first used.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

log() { printf '[cluster-storage] %s\n' "$*" >&2; }
die() { printf '[cluster-storage] error: %s\n' "$*" >&2; exit 1; }

D="$CLUSTER_DIR"
NAMESPACE=local-path-storage
STORAGE_CLASS=maestro-local
HELPER_IMAGE="${MAESTRO_AGENT_IMAGE:-localhost/maestro/agent:dev}"
KUBECONFIG_PATH="$D/kubeconfig/admin.kubeconfig"
KUBECTL=("$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH")
PID_FILE="$D/pids/local-path-provisioner.pid"
LOG_FILE="$D/logs/local-path-provisioner.log"
VOLUMES="$D/volumes"

[ -x "$LOCAL_PATH_PROVISIONER_BIN" ] || die "$LOCAL_PATH_PROVISIONER_BIN is missing: run e2e/cluster/build.sh first"
[ -f "$KUBECONFIG_PATH" ] || die "no local cluster in $D: run e2e/cluster/up.sh first"
"${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1 || die "the cluster's API server does not answer"
mkdir -p "$VOLUMES" "$D/pids" "$D/logs"

log "applying namespace $NAMESPACE, its ConfigMap, and StorageClass $STORAGE_CLASS (default)"
# setup and teardown are upstream's scripts. The helper pod's template is upstream's with
# the agent image (present, never pulled) run as root: it makes and removes directories
# that pods running as any user write to. The namespace admits privileged pods (hostPath,
# root); the claims' own namespaces may enforce the restricted standard.
"${KUBECTL[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: privileged
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: local-path-provisioner-service-account
  namespace: $NAMESPACE
automountServiceAccountToken: false
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-path-config
  namespace: $NAMESPACE
data:
  config.json: |-
    {
      "nodePathMap": [
        {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$VOLUMES"]}
      ]
    }
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      priorityClassName: system-node-critical
      automountServiceAccountToken: false
      tolerations:
        - key: node.kubernetes.io/disk-pressure
          operator: Exists
          effect: NoSchedule
      containers:
        - name: helper-pod
          image: $HELPER_IMAGE
          imagePullPolicy: IfNotPresent
          securityContext:
            runAsUser: 0
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $STORAGE_CLASS
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF

# A provisioner this script started earlier is restarted, so it reads the ConfigMap again.
if [ -f "$PID_FILE" ]; then
  pid=$(cat "$PID_FILE")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping the running provisioner ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
fi

log "starting local-path-provisioner v$LOCAL_PATH_PROVISIONER_VERSION (volumes in $VOLUMES)"
# The log is appended to across restarts; readiness is read from what this start wrote.
offset=$(($(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0) + 1))
# No --config and no --helper-pod-file: both are read from the ConfigMap local-path-config
# in --namespace. --helper-image is required by the flag parser; the template's image wins.
setsid "$LOCAL_PATH_PROVISIONER_BIN" --debug start \
  --kubeconfig "$KUBECONFIG_PATH" \
  --namespace "$NAMESPACE" \
  --configmap-name local-path-config \
  --service-account-name local-path-provisioner-service-account \
  --helper-image "$HELPER_IMAGE" \
  --provisioner-name rancher.io/local-path \
  >>"$LOG_FILE" 2>&1 </dev/null &
pid=$!
echo "$pid" > "$PID_FILE"

# Ready once it has loaded its configuration and started its controller.
end=$((SECONDS + 30))
until tail -c +"$offset" "$LOG_FILE" | grep -q 'Started provisioner controller'; do
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$PID_FILE"
    tail -c +"$offset" "$LOG_FILE" | tail -n 20 >&2
    die "local-path-provisioner exited at start"
  fi
  [ $SECONDS -lt $end ] || { tail -c +"$offset" "$LOG_FILE" | tail -n 20 >&2; die "local-path-provisioner did not start within 30s"; }
  sleep 0.5
done
log "local-path-provisioner running (pid $pid, log $LOG_FILE)"
