#!/usr/bin/env bash
# What per-user limits cost (issue 13), in one sitting on one server process: bulk CPU per
# GiB through a user without limits, through a user whose speed limit is far above the
# rate (every read charges the bucket and the quota), and through one of 1,000 limited
# users. Each rep runs the three in turn, each direction, so drift hits them alike.
#
#   tools/bench-policy.sh                 # REPS=3, BULK_BYTES=1G
#   REPS=1 BULK_BYTES=512M tools/bench-policy.sh
#   BASE_BIN=/tmp/base/target/release/mtt-mu-server tools/bench-policy.sh
#
# With BASE_BIN (a build from before limits existed), a second server from it is measured
# in the same turns ("base"), and every ratio is to it: what a user without limits pays.
#
# Results: target/bench/policy-DATE/ (results.jsonl, table.md, machine.txt, server log).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3}
BULK_BYTES=${BULK_BYTES:-1G}
OUT=${OUT:-$ROOT/target/bench/policy-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
SINK=127.0.0.1:19700 DATA=19743 CTL=19780
BIN=$ROOT/target/release
LOADGEN=$BIN/loadgen
# Far above anything loopback moves: the limit is charged on every read, never waited on.
HIGH=1099511627776

cargo build --release -q -p mtt-mu-server -p loadgen
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "reps: $REPS, bulk bytes: $BULK_BYTES"
} | tee "$OUT/machine.txt" >&2

# shellcheck source=tools/bench-common.sh
source "$ROOT/tools/bench-common.sh"

"$LOADGEN" sink --threads 2 --listen "$SINK" 2>"$OUT/sink.log" &
PIDS+=($!)
wait_for "$OUT/sink.log" ready
"$BIN/mtt-mu-server" -b "127.0.0.1:$DATA" -c "127.0.0.1:$CTL" -force-tls -timeout 1h \
    2>"$OUT/server.log" &
SERVER=$!
PIDS+=("$SERVER")
wait_for "$OUT/server.log" "ready:"

REFERENCE=free
if [[ -n ${BASE_BIN:-} ]]; then
    "$BASE_BIN" -b "127.0.0.1:$((DATA + 1))" -c "127.0.0.1:$((CTL + 1))" -force-tls -timeout 1h \
        2>"$OUT/base.log" &
    BASE=$!
    PIDS+=("$BASE")
    wait_for "$OUT/base.log" "ready:"
    curl -sf -X POST -d '{"opt":1,"args_bunch":[{"path":"/free","dst":"'$SINK'"}]}' \
        "http://127.0.0.1:$((CTL + 1))/" >/dev/null
    REFERENCE=base
fi

users='{"path":"/free","dst":"'$SINK'"},{"path":"/high","dst":"'$SINK'","speed_limit":'$HIGH',"quota":'$HIGH'}'
for i in $(seq 0 999); do
    users+=',{"path":"/lim'$i'","dst":"'$SINK'","speed_limit":'$HIGH',"conn_limit":100,"device_limit":10,"quota":'$HIGH'}'
done
curl -sf -X POST -d '{"opt":1,"args_bunch":['"$users"']}' "http://127.0.0.1:$CTL/" >"$OUT/add.json"
cat "$OUT/add.json" >&2

for rep in $(seq "$REPS"); do
    echo "== rep $rep of $REPS" >&2
    for dir in up down; do
        if [[ -n ${BASE_BIN:-} ]]; then
            timeout 300 "$LOADGEN" bulk --addr "127.0.0.1:$((DATA + 1))" --proto wss --path /free \
                --dir $dir --streams 1 --bytes "$BULK_BYTES" --server-pid "$BASE" \
                --target base --record "$RESULTS" || echo "== base $dir: run failed, not counted" >&2
        fi
        for target in free high lim500; do
            path=/$target
            timeout 300 "$LOADGEN" bulk --addr "127.0.0.1:$DATA" --proto wss --path "$path" \
                --dir $dir --streams 1 --bytes "$BULK_BYTES" --server-pid "$SERVER" \
                --target "$target" --record "$RESULTS" || echo "== $target $dir: run failed, not counted" >&2
        done
    done
done
"$LOADGEN" report --reference "$REFERENCE" "$RESULTS" | tee "$OUT/table.md"
