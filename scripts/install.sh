#!/usr/bin/env bash
# The install command (README "Set up"): everything a fresh Debian machine needs to build, test
# and benchmark Stevedore. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests and benchmarks drive as real peers:
#   skopeo          - OCI client (push/pull/inspect/copy)
#   docker-registry - CNCF distribution 2.8, the reference registry, upstream and baseline
#   podman          - OCI client (pull/push through the gateway; run as root with a private store)
#   wrk             - HTTP load generator for bench/
#   zstd            - .tar.zst archives of the air-gap commands on Node < 22.15 (newer Node has zstd built in)
#   containerd      - containerd 1.6 and ctr, the K3s node's client (pulls through hosts.toml mirrors, as root)
#   chromium        - the browser the web console tests drive headless (puppeteer-core, which downloads none)
#   ceph-mon ceph-osd radosgw ceph-common - a throw-away Ceph RADOS Gateway, the real S3 store of the tests
#                     and benchmarks (scripts/ceph-rgw.sh)
#   haproxy         - the load balancer in front of several appliances on one store (test/helpers/cluster.ts)
PACKAGES=(skopeo docker-registry podman wrk zstd containerd chromium ceph-mon ceph-osd radosgw ceph-common haproxy)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

npm ci --no-audit --no-fund
npm run build
