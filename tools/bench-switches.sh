#!/usr/bin/env bash
# Context switches and server CPU for one bulk shape, ours (io_uring) against HAProxy, in
# turns: where the time of a relay goes when the client sends one message at a time.
#
#   tools/bench-switches.sh [loadgen bulk options]       (default: --dir up --streams 1
#                                                         --bytes 1G --shape real)
#   BIN=/path/to/mtt-mu-server REPS=2 tools/bench-switches.sh --dir down --bytes 1G
#
# For each run: the relay's server CPU per GiB (loadgen), and the voluntary (it slept) and
# nonvoluntary (it was preempted) context switches of the relay's threads and of the
# sink's, from /proc/PID/task/*/status before and after. A relay that writes to the sink
# wakes it; on a machine with fewer cores than busy threads the sink then often runs in
# the relay's place (the relay's nonvoluntary count follows the sink's voluntary one).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-2}
OUT=${OUT:-$ROOT/target/bench/switches-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
BIN=${BIN:-$ROOT/target/release/mtt-mu-server}
LOADGEN=$ROOT/target/release/loadgen
ARGS=("$@")
((${#ARGS[@]})) || ARGS=(--dir up --streams 1 --bytes 1G --shape real)
SINK=127.0.0.1:19700 DATA=19744 CTL=19781 HAP=19745

cargo build --release -q -p mtt-mu-server -p loadgen
# shellcheck source=tools/bench-common.sh
source "$ROOT/tools/bench-common.sh"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load: $(cut -d' ' -f1-3 /proc/loadavg), args: ${ARGS[*]}" |
    tee "$OUT/machine.txt"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" -days 30 -subj /CN=bench.local 2>/dev/null
cat "$OUT/cert.pem" "$OUT/key.pem" >"$OUT/haproxy.pem"
"$LOADGEN" sink --threads 2 --listen "$SINK" 2>"$OUT/sink.log" &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_for "$OUT/sink.log" ready
env -u MONOIO_FORCE_LEGACY_DRIVER "$BIN" -b "127.0.0.1:$DATA" -c "127.0.0.1:$CTL" \
    -cert "$OUT/cert.pem" -key "$OUT/key.pem" -timeout 1h 2>"$OUT/ours.log" &
OURS_PID=$!
PIDS+=("$OURS_PID")
wait_for "$OUT/ours.log" "ready:"
curl -sf -X POST -d '{"opt":1,"args_bunch":[{"path":"/sw","dst":"'$SINK'"}]}' \
    "http://127.0.0.1:$CTL/" >/dev/null
printf 'global\n    nbthread 2\n    cpu-map auto:1/1-2 0-1\ndefaults\n    mode tcp\n    timeout connect 10s\n    timeout client 1h\n    timeout server 1h\nfrontend f\n    bind 127.0.0.1:%s ssl crt %s\n    default_backend b\nbackend b\n    server s %s\n' \
    "$HAP" "$OUT/haproxy.pem" "$SINK" >"$OUT/haproxy.cfg"
haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" &
HAP_PID=$!
PIDS+=("$HAP_PID")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$HAP") 2>/dev/null && break
    sleep 0.1
done

switches() { # pid -> "voluntary nonvoluntary", summed over its threads
    awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}' \
        /proc/"$1"/task/*/status
}

run() { # name pid proto port
    local v0 n0 s0 t0 v1 n1 s1 t1 cpu
    read -r v0 n0 < <(switches "$2")
    read -r s0 t0 < <(switches "$SINK_PID")
    cpu=$("$LOADGEN" bulk --addr "127.0.0.1:$4" --proto "$3" --path /sw --server-pid "$2" \
        "${ARGS[@]}" 2>&1 | awk '/server CPU/ {print $(NF-1)}')
    read -r v1 n1 < <(switches "$2")
    read -r s1 t1 < <(switches "$SINK_PID")
    printf '| %s | %s | %d | %d | %d | %d |\n' "$1" "$cpu" $((v1 - v0)) $((n1 - n0)) \
        $((s1 - s0)) $((t1 - t0))
}

{
    echo "| relay | server CPU s/GiB | relay voluntary | relay nonvoluntary | sink voluntary | sink nonvoluntary |"
    echo "|---|---:|---:|---:|---:|---:|"
    for _ in $(seq "$REPS"); do
        run ours "$OURS_PID" wss "$DATA"
        run haproxy "$HAP_PID" tls "$HAP"
    done
} | tee "$OUT/table.md"
