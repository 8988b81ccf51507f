#!/usr/bin/env bash
# A throw-away single-node Ceph cluster with the RADOS Gateway (S3) on 127.0.0.1, for tests and
# benchmarks: one monitor, one memstore OSD (objects in RAM), radosgw. No systemd, no ceph-mgr.
#
#   scripts/ceph-rgw.sh start DIR   # creates the cluster in DIR (empty or missing), prints the env
#   scripts/ceph-rgw.sh env DIR     # prints `export AWS_...=...` lines: eval "$(scripts/ceph-rgw.sh env DIR)"
#   scripts/ceph-rgw.sh stop DIR    # kills the daemons by their pid files (safe to run twice)
#
# Environment of `start`: CEPH_RGW_BUCKET (default stevedore), CEPH_RGW_OBJECTSTORE (memstore or
# bluestore; bluestore keeps RAM bounded and starts ~3 s slower), CEPH_RGW_TCP_NODELAY (default 1:
# beast's tcp_nodelay, see below; 0 is radosgw's own default). Cold start ~2-3 s.
set -Eeuo pipefail

cmd="${1:-}"
dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop|env DIR" >&2
  exit 2
fi

free_port() {
  node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}

# Polls "$@" until it succeeds, for at most $1 tenths of a second.
wait_until() {
  local tries="$1"; shift
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "ceph-rgw: timed out waiting for: $*" >&2
  "$@" >&2 || true
  return 1
}

stop_cluster() {
  # radosgw first, then the OSD, then the monitor; SIGKILL is fine for a throw-away cluster.
  local pidfile pid
  for pidfile in "$dir"/run/radosgw.pid "$dir"/run/osd.*.pid "$dir"/run/mon.pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    # Only a pid that is still one of this cluster's daemons (its command line names our conf).
    if [ -n "$pid" ] && grep -qs -- "$dir/ceph.conf" "/proc/$pid/cmdline"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

print_env() {
  if [ ! -f "$dir/env" ]; then
    echo "ceph-rgw: no cluster in $dir (run start first)" >&2
    exit 1
  fi
  cat "$dir/env"
}

start_cluster() {
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/env" ]; then
    echo "ceph-rgw: $dir already holds a cluster (stop it and use an empty dir)" >&2
    exit 1
  fi
  mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd" "$dir/rgw"
  local fsid mon_port rgw_port bucket objectstore tcp_nodelay access secret
  fsid="$(uuidgen)"
  mon_port="$(free_port)"
  rgw_port="$(free_port)"
  bucket="${CEPH_RGW_BUCKET:-stevedore}"
  objectstore="${CEPH_RGW_OBJECTSTORE:-memstore}"
  # radosgw's beast frontend writes a GET's headers and body separately and, with Nagle's algorithm on
  # (its default), holds a small body until the client ACKs the headers, which a keep-alive client
  # delays by ~40 ms: every small GET (tag, link, config) took 44 ms instead of 1 ms, curl included.
  tcp_nodelay="${CEPH_RGW_TCP_NODELAY:-1}"
  access="stevedore-test"
  secret="$(uuidgen | tr -d -)"

  local conf="$dir/ceph.conf"
  cat > "$conf" <<EOF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
mon initial members = a
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$cluster-\$name.asok
log file = $dir/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
paxos propose interval = 0.05
paxos min wait = 0.01
[mon]
mon data = $dir/mon/\$name
pid file = $dir/run/mon.pid
[osd]
osd data = $dir/osd/\$id
pid file = $dir/run/osd.\$id.pid
osd objectstore = $objectstore
bluestore block path = $dir/osd/\$id/block
bluestore block size = 4294967296
bluestore block create = true
osd crush update on start = false
# memstore keeps objects in RAM up to this cap (default 1 GiB, which a benchmark fills)
memstore device bytes = 4294967296
osd class update on start = false
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=$tcp_nodelay
rgw data = $dir/rgw
pid file = $dir/run/radosgw.pid
EOF
  export CEPH_CONF="$conf"
  # The daemons' command lines name the conf file, which is how stop recognises them.
  local c=(-c "$conf")

  monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
  ceph-mon "${c[@]}" --mkfs -i a --monmap "$dir/monmap" >/dev/null 2>&1
  ceph-mon "${c[@]}" -i a 2>>"$dir/log/daemons.err"
  # Our monitor, not another cluster's that won a race for the port: it must report our fsid.
  wait_until 300 bash -c "ceph -c '$conf' --connect-timeout 2 fsid 2>/dev/null | grep -q '$fsid'"

  local osd_uuid osd_id=""
  osd_uuid="$(uuidgen)"
  # Retried (the same uuid gives the same id): a monitor that just answered may still refuse commands
  # for a moment ("Error EPERM: problem getting command descriptions from mon", seen in a local test run).
  for _ in $(seq 1 100); do
    osd_id="$(ceph "${c[@]}" --connect-timeout 2 osd new "$osd_uuid" 2>>"$dir/log/cli.err")" && break
    osd_id=""
    sleep 0.1
  done
  if [ -z "$osd_id" ]; then
    echo "ceph-rgw: \`ceph osd new\` kept failing:" >&2
    tail -n 5 "$dir/log/cli.err" >&2
    exit 1
  fi
  mkdir -p "$dir/osd/$osd_id"
  ceph-osd "${c[@]}" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
  # Placing the OSD ourselves avoids a start-up race ("wrong fsid").
  # (Retried: on a loaded machine the monitor may refuse it for a moment after `osd new`.)
  wait_until 100 ceph "${c[@]}" osd crush add "osd.$osd_id" 1.0 root=default host=localhost
  ceph-osd "${c[@]}" -i "$osd_id" 2>>"$dir/log/daemons.err"
  wait_until 600 bash -c "ceph -c '$conf' osd stat -f json | grep -q '\"num_up_osds\":1'"

  # radosgw's pools, created in one ceph process (~1 s, instead of ~9 s one by one by radosgw).
  local pool
  for pool in .rgw.root default.rgw.log default.rgw.control default.rgw.meta \
              default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec; do
    echo "osd pool create $pool 8 8"
    echo "osd pool application enable $pool rgw"
  done | ceph "${c[@]}" >/dev/null 2>&1

  radosgw "${c[@]}" -n client.rgw.a 2>>"$dir/log/daemons.err"
  wait_until 600 curl -fsS -o /dev/null "http://127.0.0.1:$rgw_port/"
  radosgw-admin "${c[@]}" user create --uid test --display-name test \
    --access-key "$access" --secret-key "$secret" >/dev/null
  curl -fsS -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access:$secret" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "http://127.0.0.1:$rgw_port/$bucket" >/dev/null

  cat > "$dir/env" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$rgw_port
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export CEPH_RGW_BUCKET=$bucket
EOF
  cat "$dir/env"
}

case "$cmd" in
  start)
    # A failed start leaves no daemons behind.
    trap 'stop_cluster' ERR
    start_cluster
    ;;
  stop)
    [ -d "$dir" ] || exit 0
    dir="$(cd "$dir" && pwd)"
    stop_cluster
    ;;
  env) print_env ;;
  *)
    echo "usage: $0 start|stop|env DIR" >&2
    exit 2
    ;;
esac
