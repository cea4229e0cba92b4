#!/usr/bin/env bash
# Installs the Debian packages the local cluster, the image build and the tests need,
# when they are missing. A fresh machine of this kind has none of them.
set -euo pipefail
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want containerd containerd
want runc runc
want debootstrap debootstrap
want iptables iptables
want conntrack conntrack
want openssl openssl
want git git
want curl curl
want gcc gcc
want ip iproute2
# The observability e2e test scrapes the operator with a real Prometheus server.
want prometheus prometheus
# The web UI's build (operator/ui/build.rs) bundles its TypeScript with npm packages, and
# its browser tests (e2e/tests/ui.rs) drive Debian's headless chromium (/usr/bin/chromium).
want npm npm
want chromium chromium
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  echo "[deps] installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
