#!/usr/bin/env bash
# The main job, rehearsed end to end on sample data with real etcd releases:
#   1. fetch etcd 3.3.25, 3.4.23, 3.5.16 (Debian packages) into a cache, build etcd-migrate;
#   2. write sample Kubernetes-like data through etcd 3.3.25's v2 API (etcd2 storage): objects under
#      /registry, events with TTLs;
#   3. run etcd-migrate --migrate-only to 3.5.16/etcd3 (conversion, TTLs to leases, two upgrades);
#   4. show the status, then read the keys and leases back with etcd 3.5.16.
# Everything happens under target/rehearsal; nothing outside the repo but the etcd cache is touched.
set -euo pipefail
cd "$(dirname "$0")"

bin_cache=$(image/fetch-etcd.sh 3.3.25 3.4.23 3.5.16 | tail -n 1)
cargo build --release --quiet
work="$PWD/target/rehearsal"
rm -rf "$work" && mkdir -p "$work/bin" "$work/var"
for v in 3.3.25 3.4.23 3.5.16; do
  ln -s "$bin_cache/etcd-$v" "$work/bin/etcd-$v"
  ln -s "$bin_cache/etcdctl-$v" "$work/bin/etcdctl-$v"
done
data="$work/var/data"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
client=$(free_port) peer=$(free_port)

# start_etcd VERSION PEER_URL LOG: runs etcd as member "sample" on $data, serving on $client.
start_etcd() {
  "$work/bin/etcd-$1" --name sample --data-dir "$data" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "$2" \
    --initial-cluster "sample=$2" >"$work/$3" 2>&1 &
  etcd_pid=$!
}

echo "== writing sample etcd2 data with etcd 3.3.25"
start_etcd 3.3.25 "http://localhost:$peer" sample-etcd.log
trap 'kill $etcd_pid 2>/dev/null || true' EXIT
v2() { ETCDCTL_API=2 timeout 10 "$work/bin/etcdctl-3.3.25" --endpoints "http://127.0.0.1:$client" "$@"; }
for _ in $(seq 100); do v2 cluster-health >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 1 20); do v2 set "/registry/pods/default/pod-$i" "{\"kind\":\"Pod\",\"name\":\"pod-$i\"}" >/dev/null; done
for i in $(seq 1 10); do v2 set --ttl 3600 "/registry/events/default/event-$i" "{\"kind\":\"Event\",\"n\":$i}" >/dev/null; done
v2 set /registry/namespaces/default '{"kind":"Namespace"}' >/dev/null
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
trap - EXIT
echo "3.3.25/etcd2" >"$data/version.txt"
echo "   31 keys (10 events with a 1h TTL), version.txt = $(cat "$data/version.txt")"

# The hidden etcd uses its own client port and the member's peer port (free while etcd is down).
migrate=(target/release/etcd-migrate --data-dir "$data" --bin-dir "$work/bin" --name sample
  --port "$(free_port)" --peer-port "$peer" --initial-cluster "sample=http://localhost:$peer")
echo "== plan"
"${migrate[@]}" plan --target-version 3.5.16
echo "== migrating to 3.5.16/etcd3"
"${migrate[@]}" --target-version 3.5.16 --migrate-only
echo "== status"
"${migrate[@]}" status

echo "== reading the result back with etcd 3.5.16"
client=$(free_port)
start_etcd 3.5.16 "http://localhost:$peer" check-etcd.log
trap 'kill $etcd_pid 2>/dev/null || true' EXIT
v3() { ETCDCTL_API=3 timeout 10 "$work/bin/etcdctl-3.5.16" --endpoints "http://127.0.0.1:$client" "$@"; }
for _ in $(seq 100); do v3 endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
keys=$(v3 get /registry --prefix --keys-only | grep -c '^/registry' || true)
echo "   keys under /registry in v3: $keys (expected 31)"
v3 get /registry/pods/default/pod-1 --print-value-only | sed 's/^/   pod-1 = /'
leases=$(v3 lease list | tail -n +2)
echo "   leases: $(echo "$leases" | grep -c . || true)"
for lease in $leases; do v3 lease timetolive "$lease" --keys | sed 's/^/   /'; done
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
trap - EXIT
[ "$keys" = 31 ] || { echo "rehearsal FAILED: $keys keys, expected 31" >&2; exit 1; }
echo "== rehearsal passed: data in $data, backups beside it in $work/var"
