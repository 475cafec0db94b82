#!/usr/bin/env bash
# Measures mtt-mu-server against its references in one sitting and prints the table.
#
#   tools/bench.sh [all|bulk|tunnels|idle|users|latency|wrk]...   (default: all)
#
# Environment: REPS (default 3; medians are taken over them), OUT (results folder, default
# target/bench/DATE), BULK_BYTES (per single stream, default 1G; 4-stream runs move the same
# total), TUNNELS (tunnels per run, default 1000), IDLE_COUNTS (default "1000 9000"),
# SHAPES (bulk upload shapes, default "bulk16k"; "bulk16k real" runs both, interleaved per
# rep: `real` is mtt-client's shape, see tools/loadgen/src/shape.rs, and its rows are named
# "..., real shape" so each compares with HAProxy driven the same way).
#
# Targets, all running at once on 127.0.0.1, all relaying to the same `loadgen sink`:
#   tcp            the sink itself: loopback TCP with no relay (no server CPU)
#   haproxy        HAProxy, mode tcp, bind ... ssl crt (same certificate), 2 threads pinned
#   ours-epoll     mtt-mu-server -driver epoll, WSS
#   ours-uring     mtt-mu-server -driver io_uring (the default), WSS (the log's ready line
#                  must say driver=io_uring; MONOIO_FORCE_LEGACY_DRIVER is cleared for it)
#   .../mux        the same server, one smux session carrying the streams
# The loopback baseline and HAProxy speak raw TCP / raw TLS through the same load tool.
# Every ratio in the table is target / haproxy of the same run.
#
# Only 127.0.0.1 is used. Every load run is bounded in bytes or count and in time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${REPS:-3}
BULK_BYTES=${BULK_BYTES:-1G}
TUNNELS=${TUNNELS:-1000}
IDLE_COUNTS=${IDLE_COUNTS:-1000 9000}
SHAPES=${SHAPES:-bulk16k}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-$ROOT/target/bench/$STAMP}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
STEPS=${*:-all}

SINK_PORTS=(19100 19101 19102 19103)
URING_DATA=19443 URING_CTL=19280
EPOLL_DATA=19444 EPOLL_CTL=19281
HAPROXY_PORT=19445
USERS_PORT=19600

want() { [[ " $STEPS " == *" all "* || " $STEPS " == *" $1 "* ]]; }
log() { echo "== $*" >&2; }

# --- tools -----------------------------------------------------------------------------
need_apt=()
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
log "building (release)"
cargo build --release -q -p mtt-mu-server -p loadgen
BIN=$ROOT/target/release
LOADGEN=$BIN/loadgen

# --- machine ---------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "openssl: $(openssl version)"
    echo "rustc: $(rustc --version)"
    echo "open files (soft/hard): $(ulimit -Sn)/$(ulimit -Hn)"
    echo "reps: $REPS, bulk bytes: $BULK_BYTES, tunnels per run: $TUNNELS, shapes: $SHAPES"
} | tee "$OUT/machine.txt" >&2

# --- processes -------------------------------------------------------------------------
# PIDS (stopped at exit) and wait_for.
# shellcheck source=tools/bench-common.sh
source "$ROOT/tools/bench-common.sh"

# ECDSA P-256, as the server's own -force-tls certificate; HAProxy gets the same pair.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" -days 30 -subj /CN=bench.local \
    -addext subjectAltName=DNS:bench.local 2>/dev/null
cat "$OUT/cert.pem" "$OUT/key.pem" >"$OUT/haproxy.pem"


sink_args=()
for p in "${SINK_PORTS[@]}"; do sink_args+=(--listen "127.0.0.1:$p"); done
"$LOADGEN" sink --threads 2 "${sink_args[@]}" 2>"$OUT/sink.log" &
SINK_PID=$!
PIDS+=($!)
wait_for "$OUT/sink.log" "ready"

# start_ours NAME DATA CTL DRIVER [SERVER FLAG...]: sets OURS_PID
start_ours() {
    local name=$1 data=$2 ctl=$3 driver=$4
    shift 4
    env -u MONOIO_FORCE_LEGACY_DRIVER "$BIN/mtt-mu-server" -b "127.0.0.1:$data" \
        -c "127.0.0.1:$ctl" -cert "$OUT/cert.pem" -key "$OUT/key.pem" -timeout 1h \
        -driver "$driver" "$@" 2>"$OUT/$name.log" &
    OURS_PID=$!
    PIDS+=("$OURS_PID")
    wait_for "$OUT/$name.log" "ready:"
    # stderr is unbuffered: the ready line may arrive in pieces. Wait for its end.
    for _ in $(seq 50); do
        [[ -z $(tail -c1 "$OUT/$name.log") ]] && break
        sleep 0.1
    done
    if ! grep -q "driver=$driver" "$OUT/$name.log"; then
        echo "$name: asked for -driver $driver, the server says:" >&2
        grep "ready:" "$OUT/$name.log" >&2
        return 1
    fi
    # -driver io_uring falls back to epoll silently where the kernel forbids io_uring:
    # check that the process really holds io_uring instances.
    if [[ $driver == io_uring ]] && ! ls -l "/proc/$OURS_PID/fd" | grep -q 'io_uring'; then
        echo "$name: -driver io_uring but no io_uring fd in /proc/$OURS_PID/fd (fell back?)" >&2
        return 1
    fi
    local users='{"path":"/bench","dst":"127.0.0.1:'${SINK_PORTS[0]}'"}'
    for i in "${!SINK_PORTS[@]}"; do
        users+=',{"path":"/bench'$i'","dst":"127.0.0.1:'${SINK_PORTS[$i]}'"}'
    done
    curl -sf -X POST -d '{"opt":1,"args_bunch":['"$users"']}' "http://127.0.0.1:$ctl/" >/dev/null
}

start_haproxy() {
    {
        echo "global"
        echo "    nbthread 2"
        echo "    cpu-map auto:1/1-2 0-1"
        echo "    maxconn 9800"
        echo "defaults"
        echo "    mode tcp"
        echo "    timeout connect 10s"
        echo "    timeout client 1h"
        echo "    timeout server 1h"
        echo "frontend tls_in"
        echo "    bind 127.0.0.1:$HAPROXY_PORT ssl crt $OUT/haproxy.pem"
        echo "    default_backend sink"
        echo "backend sink"
        echo "    balance roundrobin"
        for i in "${!SINK_PORTS[@]}"; do echo "    server s$i 127.0.0.1:${SINK_PORTS[$i]}"; done
    } >"$OUT/haproxy.cfg"
    haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" &
    HAPROXY_PID=$!
    PIDS+=("$HAPROXY_PID")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$HAPROXY_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "haproxy did not start" >&2
    cat "$OUT/haproxy.log" >&2
    return 1
}

stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Each start_all listens on fresh ports: once (14:02 UTC, 2026-11-25) a restarted server could
# not bind the controller port its predecessor had just released (EADDRINUSE, although the
# listener sets SO_REUSEADDR and the old process had been waited for); cause not found.
STARTS=0
start_all() {
    local shift=$((STARTS * 10))
    STARTS=$((STARTS + 1))
    URING_DATA=$((19443 + shift)) URING_CTL=$((19280 + shift))
    EPOLL_DATA=$((19444 + shift)) EPOLL_CTL=$((19281 + shift))
    HAPROXY_PORT=$((19445 + shift))
    start_ours ours-epoll $EPOLL_DATA $EPOLL_CTL epoll
    EPOLL_PID=$OURS_PID
    start_ours ours-uring $URING_DATA $URING_CTL io_uring
    URING_PID=$OURS_PID
    start_haproxy
}
stop_all() {
    stop "$EPOLL_PID"
    stop "$URING_PID"
    stop "$HAPROXY_PID"
}

LG() { timeout 300 "$LOADGEN" "$@" --record "$RESULTS"; }

# run_targets SUBCOMMAND ARGS...: the same measurement against every relay.
run_targets() {
    local cmd=$1
    shift
    LG "$cmd" --addr "127.0.0.1:$HAPROXY_PORT" --proto tls --server-pid "$HAPROXY_PID" --target haproxy "$@"
    LG "$cmd" --addr "127.0.0.1:$EPOLL_DATA" --proto wss --server-pid "$EPOLL_PID" --target ours-epoll "$@"
    LG "$cmd" --addr "127.0.0.1:$URING_DATA" --proto wss --server-pid "$URING_PID" --target ours-uring "$@"
}

bulk_size() { # streams -> bytes per stream
    local n=${BULK_BYTES%[KMG]} scale=1
    case $BULK_BYTES in
    *K) scale=1024 ;;
    *M) scale=1048576 ;;
    *G) scale=1073741824 ;;
    esac
    echo $((n * scale / $1))
}

start_all

for rep in $(seq "$REPS"); do
    if want bulk; then
        log "bulk, run $rep of $REPS"
        for streams in 1 4; do
            bytes=$(bulk_size $streams)
            for dir in up down; do
                for shape in $SHAPES; do
                    s=(--shape "$shape")
                    LG bulk --addr "127.0.0.1:${SINK_PORTS[0]}" --proto tcp --target tcp \
                        --dir $dir --streams $streams --bytes "$bytes" "${s[@]}"
                    run_targets bulk --dir $dir --streams $streams --bytes "$bytes" "${s[@]}"
                    LG bulk --addr "127.0.0.1:$EPOLL_DATA" --proto wss --mux --server-pid "$EPOLL_PID" \
                        --target ours-epoll/mux --dir $dir --streams $streams --bytes "$bytes" "${s[@]}"
                    LG bulk --addr "127.0.0.1:$URING_DATA" --proto wss --mux --server-pid "$URING_PID" \
                        --target ours-uring/mux --dir $dir --streams $streams --bytes "$bytes" "${s[@]}"
                done
            done
        done
    fi
    if want tunnels; then
        log "new tunnels, run $rep of $REPS"
        for conc in 1 16; do
            run_targets tunnels --count "$TUNNELS" --concurrency $conc --full
            run_targets tunnels --count "$TUNNELS" --concurrency $conc
        done
    fi
done

if want latency; then
    # The server's own share comes from its mtt_route_change_seconds histogram (receipt of
    # the command to every worker's acknowledgement); the round trip adds HTTP and the
    # client. Under load twice: with the load tools at normal priority (they compete with
    # the workers for the same two cores: the kernel keeps a busy worker waiting for a CPU
    # a quarter to half of the time), and at SCHED_IDLE (chrt -i 0), standing in for
    # remote peers, so that the workers have the cores as on a real server.
    for rep in $(seq "$REPS"); do
        log "route change latency, run $rep of $REPS (idle, then under a 4-stream download)"
        for t in "ours-epoll $EPOLL_CTL $EPOLL_DATA" "ours-uring $URING_CTL $URING_DATA"; do
            set -- $t
            LG latency --controller "127.0.0.1:$2" --target "$1" --label ", idle"
        done
        for prio in normal idle; do
            wrap=()
            if [[ $prio == idle ]]; then
                wrap=(chrt -i 0)
                chrt -a -i -p 0 "$SINK_PID" >/dev/null
            fi
            for t in "ours-epoll $EPOLL_CTL $EPOLL_DATA" "ours-uring $URING_CTL $URING_DATA"; do
                set -- $t
                timeout 120 "${wrap[@]}" "$LOADGEN" bulk --addr "127.0.0.1:$3" --proto wss \
                    --path /bench0 --dir down --streams 4 --bytes 8G >/dev/null 2>&1 &
                load=$!
                sleep 1
                LG latency --controller "127.0.0.1:$2" --target "$1" \
                    --label ", under a 4-stream download, load tools at $prio priority"
                kill "$load" 2>/dev/null || true
                wait "$load" 2>/dev/null || true
            done
        done
    done
    chrt -a -o -p 0 "$SINK_PID" >/dev/null
fi

if want wrk; then
    log "wrk against the controller of ours-uring (the default driver)"
    for script in ping add; do
        timeout 60 wrk -t2 -c16 -d5s -s "tools/wrk/$script.lua" "http://127.0.0.1:$URING_CTL/" \
            | tee "$OUT/wrk-$script.txt" >&2
    done
fi

stop_all

# Memory is measured on fresh processes, so memory freed by earlier runs cannot hide growth.
if want idle; then
    for rep in $(seq "$REPS"); do
        for count in $IDLE_COUNTS; do
            log "idle $count, run $rep of $REPS"
            start_all
            LG idle --count "$count" --paths ${#SINK_PORTS[@]} --path /bench \
                --addr "127.0.0.1:$HAPROXY_PORT" --proto tls --server-pid "$HAPROXY_PID" --target haproxy
            LG idle --count "$count" --paths ${#SINK_PORTS[@]} --path /bench \
                --addr "127.0.0.1:$EPOLL_DATA" --proto wss --server-pid "$EPOLL_PID" --target ours-epoll
            LG idle --count "$count" --paths ${#SINK_PORTS[@]} --path /bench \
                --addr "127.0.0.1:$URING_DATA" --proto wss --server-pid "$URING_PID" --target ours-uring
            stop_all
        done
    done
fi

if want users; then
    for rep in $(seq "$REPS"); do
        log "users, run $rep of $REPS"
        for spec in "100000 1000" "1000000 1000" "1000000 0"; do
            set -- $spec
            # Fresh ports each time: the previous server's sockets may linger.
            USERS_PORT=$((USERS_PORT + 2))
            start_ours ours-users $USERS_PORT $((USERS_PORT + 1)) io_uring
            LG users --controller "127.0.0.1:$((USERS_PORT + 1))" --server-pid "$OURS_PID" \
                --target ours-uring --count "$1" --per-post "$2"
            stop "$OURS_PID"
        done
    done
fi

"$LOADGEN" report "$RESULTS" --reference haproxy | tee "$OUT/table.md"
echo "results: $OUT" >&2
