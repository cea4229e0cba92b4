#!/usr/bin/env bash
# Ends every process the local cluster started and removes its state: the components by
# the PIDs that up.sh recorded, then the containers they left (containerd shims and pod
# processes, found through the kubepods cgroups), then mounts, network leftovers and files.
# Safe to run twice, and on the remains of a cluster whose processes were already killed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"
D="$CLUSTER_DIR"
log() { printf '[cluster-down] %s\n' "$*" >&2; }

# stop NAME: SIGTERM, then SIGKILL after a grace period, for the PID up.sh recorded.
stop() {
  local f="$D/pids/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null && log "killed $1 ($pid)"
  fi
  rm -f "$f"
}

# What the demo started: its HTTP server and moto (stopped through moto.sh, by PID).
stop demo-sink
if [ -f "$D/demo-moto.url" ]; then
  bash "$here/../moto/moto.sh" stop "$(cat "$D/demo-moto.url")" >/dev/null 2>&1 || true
fi

# The volume provisioner (storage.sh) first, so it starts no helper pods during teardown;
# then the node, so nothing restarts containers while they are being removed. Its volumes
# ($D/volumes) go with the state dir below.
for c in local-path-provisioner maestro-operator kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done

# Pod processes live in the kubepods cgroups (cgroupfs driver); kill them all, then the
# shims of this cluster's containerd, then containerd itself.
kill_cgroup_tree() {
  local procs
  for hier in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$hier" ] || continue
    while read -r procs; do
      xargs -r kill -KILL < "$procs" 2>/dev/null
    done < <(find "$hier" -name cgroup.procs 2>/dev/null)
  done
}
kill_cgroup_tree
if [ -d "$D/containerd" ]; then
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $D/containerd/containerd.sock" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null && log "killed containerd shim $pid"
  done
fi
stop containerd
sleep 0.5
kill_cgroup_tree
# Remove the now-empty pod cgroups, deepest first, so the next kubelet starts clean.
for hier in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
  [ -d "$hier" ] && find "$hier" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# Unmount everything below the state dir (volumes, overlay rootfs, shm), deepest first,
# and the network namespaces containerd made for pods.
if [ -d "$D" ]; then
  awk -v d="$D" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
fi
for ns in /var/run/netns/cni-*; do
  [ -e "$ns" ] || continue
  umount "$ns" 2>/dev/null
  rm -f "$ns"
done
if ip link show maestro0 >/dev/null 2>&1; then ip link delete maestro0; fi
# kube-proxy's and the CNI plugins' iptables rules.
for table in nat filter mangle; do
  iptables-save -t "$table" 2>/dev/null | grep -q -E 'KUBE-|CNI-' || continue
  iptables-save -t "$table" | grep -v -E '(KUBE-|CNI-)' | iptables-restore -T "$table" 2>/dev/null \
    || log "could not clean iptables table $table"
done

rm -rf "$D"
left=$(pgrep -f -a "$TOOLS_BIN|$D" 2>/dev/null || true)
if [ -n "$left" ]; then
  log "processes still running:"; echo "$left" >&2; exit 1
fi
log "stopped; no process of the local cluster is left"
