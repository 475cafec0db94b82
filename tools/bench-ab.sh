#!/usr/bin/env bash
# Old build against new, in one sitting: bulk TLS WebSocket relaying (plain, 1 and 4
# streams; mux, 4 streams; each direction) through two servers started side by side, each
# rep running every row against both in turn, so the machine's drift hits them alike. For
# changes that must not cost anything (a refactor, a protocol fix): every ratio is new/old.
#
#   OLD_BIN=/tmp/old/target/release/mtt-mu-server tools/bench-ab.sh
#   REPS=5 BULK_BYTES=4G OLD_BIN=... tools/bench-ab.sh
#   SHAPE=real ROWS="1 4:--mux" DIRS=down OLD_BIN=... tools/bench-ab.sh
#
# SHAPE: the upload shape (`loadgen bulk --shape`: bulk16k, the default, or real, as
# mtt-client sends). ROWS: stream counts, each with `:--mux` for a mux row (default
# "1 4 4:--mux"). DIRS: default "up down". BULK_BYTES is per stream.
#
# Runs under 2 GiB are too short for /proc's 10 ms CPU tick on a shared machine.
#
# Results: target/bench/ab-DATE/ (results.jsonl, table.md, machine.txt, server logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${OLD_BIN:?set OLD_BIN to the mtt-mu-server binary of the old build}"
REPS=${REPS:-3}
BULK_BYTES=${BULK_BYTES:-2G}
SHAPE=${SHAPE:-bulk16k}
ROWS=${ROWS:-1 4 4:--mux}
DIRS=${DIRS:-up down}
OUT=${OUT:-$ROOT/target/bench/ab-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
SINK=127.0.0.1:19900 DATA=19943 CTL=19980
BIN=$ROOT/target/release
LOADGEN=$BIN/loadgen

cargo build --release -q -p mtt-mu-server -p loadgen
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "new: $(git -C "$ROOT" rev-parse --short HEAD), old: $OLD_BIN"
    echo "nproc: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "kernel: $(uname -r)"
    echo "reps: $REPS, bulk bytes: $BULK_BYTES, shape: $SHAPE, rows: $ROWS, dirs: $DIRS"
} | tee "$OUT/machine.txt" >&2

# shellcheck source=tools/bench-common.sh
source "$ROOT/tools/bench-common.sh"

"$LOADGEN" sink --threads 2 --listen "$SINK" 2>"$OUT/sink.log" &
PIDS+=($!)
wait_for "$OUT/sink.log" ready

declare -A PID PORT
start() { # name binary offset
    "$2" -b "127.0.0.1:$((DATA + $3))" -c "127.0.0.1:$((CTL + $3))" -force-tls -timeout 1h \
        2>"$OUT/$1.log" &
    PID[$1]=$!
    PORT[$1]=$((DATA + $3))
    PIDS+=("${PID[$1]}")
    wait_for "$OUT/$1.log" "ready:"
    curl -sf -X POST -d '{"opt":1,"args_bunch":[{"path":"/ab","dst":"'$SINK'"}]}' \
        "http://127.0.0.1:$((CTL + $3))/" >/dev/null
}
start old "$OLD_BIN" 0
start new "$BIN/mtt-mu-server" 1

for rep in $(seq "$REPS"); do
    echo "== rep $rep of $REPS" >&2
    for row in $ROWS; do
        set -- ${row/:/ }
        streams=$1
        shift
        for dir in $DIRS; do
            for target in old new; do
                # Mux rows go to a file of their own: the report names rows by direction
                # and stream count only.
                record=$RESULTS
                [[ $* == *--mux* ]] && record=$OUT/results-mux.jsonl
                timeout 300 "$LOADGEN" bulk --addr "127.0.0.1:${PORT[$target]}" --proto wss \
                    --path /ab "$@" --dir $dir --streams "$streams" --bytes "$BULK_BYTES" \
                    --shape "$SHAPE" \
                    --server-pid "${PID[$target]}" --target "$target" --record "$record" ||
                    echo "== $target $dir $row: run failed, not counted" >&2
            done
        done
    done
done
{
    if [[ -s $RESULTS ]]; then
        echo "plain (smux_off):"
        "$LOADGEN" report --reference old "$RESULTS"
        echo
    fi
    if [[ -s $OUT/results-mux.jsonl ]]; then
        echo "mux (smux_on, the streams in one session):"
        "$LOADGEN" report --reference old "$OUT/results-mux.jsonl"
    fi
} | tee "$OUT/table.md"
