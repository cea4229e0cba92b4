#!/usr/bin/env bash
# Boots a real single-node Kubernetes on this machine from upstream parts: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (built
# by build.sh), containerd + runc + CNI plugins from Debian, then storage.sh's volume
# provisioner (local-path-provisioner, default StorageClass maestro-local). No Docker,
# no systemd.
# Every process runs in the background with its PID recorded under $CLUSTER_DIR/pids, so
# down.sh can end exactly what this script started. Prints the KUBECONFIG path last.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

log() { printf '[cluster-up] %s\n' "$*" >&2; }
die() { printf '[cluster-up] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (containerd, kubelet and CNI need it)"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  [ -x "$TOOLS_BIN/$b" ] || die "$TOOLS_BIN/$b is missing: run e2e/cluster/build.sh first"
done
[ -x "$LOCAL_PATH_PROVISIONER_BIN" ] || die "$LOCAL_PATH_PROVISIONER_BIN is missing: run e2e/cluster/build.sh first"
for b in containerd containerd-shim-runc-v2 runc ctr openssl iptables conntrack; do
  command -v "$b" >/dev/null || die "$b not found: run e2e/cluster/install-deps.sh"
done

# A cluster left by a session that ended without cluster-down (its processes killed,
# its mounts and state still here) is cleaned first, so every start is a fresh one.
if [ -d "$CLUSTER_DIR" ]; then
  log "cleaning the state of an earlier cluster"
  "$here/down.sh"
fi

D="$CLUSTER_DIR"
mkdir -p "$D"/{pki,kubeconfig,logs,pids,etcd,containerd,cni/net.d,kubelet,pod-logs,config}
NODE_IP=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="src") print $(i+1)}' | head -n1)
[ -n "$NODE_IP" ] || NODE_IP=$(hostname -I | awk '{print $1}')
[ -n "$NODE_IP" ] || die "cannot find this machine's IP address"
log "node $NODE_NAME at $NODE_IP, state in $D"

# ---------------------------------------------------------------- certificates
pki="$D/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
  -days 3650 -subj "/CN=maestro-local-ca"

# issue NAME CN O [SANS]: a key and a certificate signed by the cluster CA.
issue() {
  local name=$1 cn=$2 org=$3 sans=${4:-}
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  local ext="$pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } > "$ext"
  openssl_quiet req -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj"
  openssl_quiet x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -out "$pki/$name.crt" -days 3650 -extfile "$ext"
  rm -f "$pki/$name.csr" "$ext"
}
issue apiserver kube-apiserver "" \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP"
issue apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
issue admin maestro-admin system:masters
issue controller-manager system:kube-controller-manager ""
issue scheduler system:kube-scheduler ""
issue kube-proxy system:kube-proxy ""
issue kubelet "system:node:$NODE_NAME" system:nodes
issue kubelet-serving "$NODE_NAME" "" "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
openssl_quiet genrsa -out "$pki/sa.key" 2048
openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
chmod 600 "$pki"/*.key

# kubeconfig NAME USER: a kubeconfig for one component, certificates embedded.
kubeconfig() {
  local name=$1 cert=$2 server=https://127.0.0.1:$APISERVER_PORT
  local f="$D/kubeconfig/$name.kubeconfig"
  local k=("$TOOLS_BIN/kubectl" --kubeconfig "$f")
  "${k[@]}" config set-cluster maestro-local --server="$server" \
    --certificate-authority="$pki/ca.crt" --embed-certs=true >/dev/null
  "${k[@]}" config set-credentials "$name" --client-certificate="$pki/$cert.crt" \
    --client-key="$pki/$cert.key" --embed-certs=true >/dev/null
  "${k[@]}" config set-context maestro-local --cluster=maestro-local --user="$name" >/dev/null
  "${k[@]}" config use-context maestro-local >/dev/null
  chmod 600 "$f"
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kube-proxy kube-proxy
kubeconfig kubelet kubelet
KUBECONFIG_PATH="$D/kubeconfig/admin.kubeconfig"
KUBECTL=("$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH")

# start NAME CMD...: runs CMD in its own session in the background, logs to logs/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >"$D/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$D/pids/$name.pid"
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      log "timed out after ${secs}s waiting for $what; last lines of the logs:"
      for f in "$D"/logs/*.log; do echo "== $f"; tail -n 15 "$f"; done >&2
      exit 1
    fi
    sleep 1
  done
}

# ---------------------------------------------------------------- host networking
# Pods on the bridge reach Services through kube-proxy's iptables rules only when bridged
# traffic passes through iptables and the host forwards packets.
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "bridge-nf-call-iptables not available"

# ---------------------------------------------------------------- containerd
cat > "$D/cni/net.d/10-maestro-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "maestro",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "maestro0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$D/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
CONTAINERD_SOCK="$D/containerd/containerd.sock"
containerd config default | python3 -c '
import re, sys
root, sock, cni, pause = sys.argv[1:5]
conf = sys.stdin.read()
def sub(pattern, repl):
    global conf
    conf, n = re.subn(pattern, repl, conf, count=1, flags=re.M)
    if n != 1:
        sys.exit("containerd config: no line matches " + pattern)
sub(r"^root = .*$", f"root = \"{root}/root\"")
sub(r"^state = .*$", f"state = \"{root}/state\"")
sub(r"^(\[grpc\]\n  address = ).*$", f"\\g<1>\"{sock}\"")
# Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj makes runc fail.
sub(r"restrict_oom_score_adj = false", "restrict_oom_score_adj = true")
sub(r"sandbox_image = .*$", f"sandbox_image = \"{pause}\"")
sub(r"bin_dir = \"/opt/cni/bin\"", "bin_dir = \"/usr/lib/cni\"")
sub(r"conf_dir = \"/etc/cni/net.d\"", f"conf_dir = \"{cni}\"")
print(conf)
' "$D/containerd" "$CONTAINERD_SOCK" "$D/cni/net.d" "$PAUSE_IMAGE" > "$D/config/containerd.toml"
grep -q 'SystemdCgroup = false' "$D/config/containerd.toml" || die "containerd config: expected cgroupfs (SystemdCgroup = false)"
log "starting containerd"
start containerd containerd --config "$D/config/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version

# The sandbox (pause) image must be in containerd before the first pod; nothing can be pulled.
if ! ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
  CONTAINERD_ADDRESS="$CONTAINERD_SOCK" bash "$here/../images/build-images.sh" --pause-only
fi

# ---------------------------------------------------------------- etcd
log "starting etcd"
start etcd "$TOOLS_BIN/etcd" --name maestro-local --data-dir "$D/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "maestro-local=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "" --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

# ---------------------------------------------------------------- control plane
log "starting kube-apiserver"
start kube-apiserver "$TOOLS_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --allow-privileged=true --profiling=false --v=1
wait_for kube-apiserver 90 "${KUBECTL[@]}" get --raw /readyz

log "starting kube-controller-manager, kube-scheduler"
start kube-controller-manager "$TOOLS_BIN/kube-controller-manager" \
  --kubeconfig "$D/kubeconfig/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$D/kubeconfig/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$D/kubeconfig/controller-manager.kubeconfig" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR" \
  --cluster-cidr "$POD_CIDR" --allocate-node-cidrs=false \
  --leader-elect=false --bind-address 127.0.0.1 --profiling=false --v=1
start kube-scheduler "$TOOLS_BIN/kube-scheduler" \
  --kubeconfig "$D/kubeconfig/scheduler.kubeconfig" \
  --authentication-kubeconfig "$D/kubeconfig/scheduler.kubeconfig" \
  --authorization-kubeconfig "$D/kubeconfig/scheduler.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --profiling=false --v=1

# ---------------------------------------------------------------- node
cat > "$D/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
cgroupDriver: cgroupfs
failSwapOn: false
podLogsDir: "$D/pod-logs"
# Nothing can be pulled here: never evict or garbage-collect the imported images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
maxPods: 110
resolvConf: /etc/resolv.conf
EOF
log "starting kubelet, kube-proxy"
start kubelet "$TOOLS_BIN/kubelet" --config "$D/config/kubelet.yaml" \
  --kubeconfig "$D/kubeconfig/kubelet.kubeconfig" --root-dir "$D/kubelet" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
start kube-proxy "$TOOLS_BIN/kube-proxy" --kubeconfig "$D/kubeconfig/kube-proxy.kubeconfig" \
  --hostname-override "$NODE_NAME" --cluster-cidr "$POD_CIDR" --proxy-mode iptables \
  --conntrack-max-per-core 0 --metrics-bind-address 127.0.0.1:10249 --v=1

wait_for "node $NODE_NAME Ready" 120 \
  "${KUBECTL[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
wait_for "the default ServiceAccount" 60 "${KUBECTL[@]}" -n default get serviceaccount default

# ---------------------------------------------------------------- storage
# Dynamic PersistentVolumes: rancher's local-path-provisioner as a host process and the
# default StorageClass maestro-local (volumes under $D/volumes).
bash "$here/storage.sh"

cat > "$D/env" <<EOF
export KUBECONFIG="$KUBECONFIG_PATH"
export CONTAINERD_ADDRESS="$CONTAINERD_SOCK"
# Where step pods reach servers the tests start on this machine (moto, HTTP sinks).
export MAESTRO_NODE_IP="$NODE_IP"
export PATH="$TOOLS_BIN:\$PATH"
EOF
log "cluster ready: $("${KUBECTL[@]}" get node "$NODE_NAME" --no-headers)"
log "use it with: source $D/env   (or export KUBECONFIG=$KUBECONFIG_PATH)"
echo "$KUBECONFIG_PATH"
