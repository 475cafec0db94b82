#!/usr/bin/env bash
# What users cost the server (issue 14, items 3 to 5), in one sitting, for this build and,
# with BASE_BIN, an older one in the same turns:
#
#   users   RSS per user and server CPU to load 1,000,000 users (1000 per POST) with
#           -workers 1, 2, 8, 16, 32 and 64 (RSS does not need real cores), and with 2 MiB
#           POSTs at 16 workers; then the RSS 7 s after the users are cleared (opt 3)
#   stall   how long an open tunnel waits while 1,000,000 users load in 2 MiB POSTs
#           (`loadgen stall`, -workers 1, the server with -verbose: its log times every
#           route-update step a worker took, wall and CPU)
#   soak    RSS cold, at the peak and 0 to 25 s after a soak (2,000 plain tunnels and
#           200 mux sessions of 4 streams, 40 s)
#
#   tools/bench-users.sh                         # all three
#   BASE_BIN=/tmp/base/mtt-mu-server tools/bench-users.sh users stall
#   WORKERS="1 16" tools/bench-users.sh users
#
# Results: target/bench/users-DATE/ (results.jsonl from loadgen, summary.txt with the
# lines below, the servers' logs, machine.txt).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/bench/users-$(date -u +%Y%m%d-%H%M%S)}
WORKERS=${WORKERS:-1 2 8 16 32 64}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
SUMMARY=$OUT/summary.txt
BIN=$ROOT/target/release
LOADGEN=$BIN/loadgen
WHAT=${*:-users stall soak}

cargo build --release -q -p mtt-mu-server -p loadgen -p soak
TARGETS=("new:$BIN/mtt-mu-server")
if [[ -n ${BASE_BIN:-} ]]; then
    TARGETS=("base:$BASE_BIN" "${TARGETS[@]}")
fi
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "base: ${BASE_BIN:-none}"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

free_port() {
    python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
log() { echo "$*" | tee -a "$SUMMARY"; }

SERVER_PID=
# Starts a server (fresh ports); fails (status 3) if it did not come up, e.g. when another
# process took a probed port before it bound it.
start() {
    local bin=$1 name=$2 data=$3 ctl=$4
    shift 4
    "$bin" -b "127.0.0.1:$data" -c "127.0.0.1:$ctl" -force-tls "$@" 2>"$OUT/$name.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q "ready" "$OUT/$name.log" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 3
        sleep 0.1
    done
    return 3
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
retry() { for _ in 1 2 3; do "$@" && return 0; done; return 1; }

users_run() {
    local label=$1 bin=$2 workers=$3 per_post=$4 ctl
    ctl=$(free_port)
    start "$bin" "users-$label-$workers-$per_post" 0 "$ctl" -workers "$workers" || return 3
    local pid=$SERVER_PID idle cpu0
    idle=$(rss_kib "$pid")
    cpu0=$(cpu_s "$pid")
    "$LOADGEN" users --controller "127.0.0.1:$ctl" --server-pid "$pid" --count 1000000 \
        --per-post "$per_post" --target "$label-w$workers" --record "$RESULTS" >&2
    local loaded cpu1
    loaded=$(rss_kib "$pid")
    cpu1=$(cpu_s "$pid")
    curl -sf -X POST -d '{"opt":3}' "http://127.0.0.1:$ctl/" >/dev/null
    sleep 7
    log "users $label workers=$workers per_post=$per_post idle_kib=$idle loaded_kib=$loaded" \
        "server_cpu_s=$(echo "$cpu1 - $cpu0" | bc) cleared_after_7s_kib=$(rss_kib "$pid")"
    stop "$pid"
}

stall_run() {
    local label=$1 bin=$2 sink data ctl
    sink=$(free_port)
    data=$(free_port)
    ctl=$(free_port)
    "$LOADGEN" sink --listen "127.0.0.1:$sink" 2>/dev/null &
    local sink_pid=$!
    if ! start "$bin" "stall-$label" "$data" "$ctl" -workers 1 -verbose; then
        stop "$sink_pid"
        return 3
    fi
    local pid=$SERVER_PID
    "$LOADGEN" stall --addr "127.0.0.1:$data" --controller "127.0.0.1:$ctl" \
        --sink "127.0.0.1:$sink" --target "$label" --record "$RESULTS" | tee -a "$SUMMARY"
    stop "$pid"
    stop "$sink_pid"
    # The worker's own steps (builds that log them): "in WALL (CPU of CPU)".
    { grep "route update step" "$OUT/stall-$label.log" || true; } |
        sed 's/.* in \([^ ]*\) (\([^ ]*\) of CPU)/\1 \2/' |
        python3 -c '
import re, sys
def us(x):
    m = re.match(r"([\d.]+)(ns|µs|ms|s)$", x)
    return float(m.group(1)) * {"ns": 1e-3, "µs": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
rows = [line.split() for line in sys.stdin]
for i, name in ((0, "wall"), (1, "cpu")):
    v = sorted(us(r[i]) for r in rows)
    if v:
        q = lambda p: v[min(len(v) - 1, int(len(v) * p))]
        print(f"{sys.argv[1]} worker steps ({name}): {len(v)} steps, p50 {q(0.5):.0f} us, "
              f"p99 {q(0.99):.0f} us, max {v[-1]:.0f} us")
' "stall $label" | tee -a "$SUMMARY"
}

soak_run() {
    local label=$1 bin=$2 data ctl
    data=$(free_port)
    ctl=$(free_port)
    start "$bin" "soak-$label" "$data" "$ctl" -workers 2 || return 3
    local pid=$SERVER_PID peak_file=$OUT/soak-$label.peak
    log "soak $label cold_kib=$(rss_kib "$pid")"
    echo 0 >"$peak_file"
    (
        while [[ -f $peak_file ]]; do
            r=$(rss_kib "$pid" 2>/dev/null || echo 0)
            ((r > $(cat "$peak_file" 2>/dev/null || echo 0))) && echo "$r" >"$peak_file"
            sleep 0.5
        done
    ) &
    local sampler=$!
    # --settle 1s: the RSS is read here, every 5 s; the soak's own verdict on it is moot.
    "$BIN/soak" --data "127.0.0.1:$data" --controller "127.0.0.1:$ctl" --pid "$pid" --tls \
        --plain 2000 --mux 200 --streams-per-session 4 --duration 40s --warmup 0 \
        --churn-ops 20 --seed 20261207 --report-every 0 --settle 1s \
        >"$OUT/soak-$label.out" 2>&1 || true
    log "soak $label peak_kib=$(cat "$peak_file")"
    rm -f "$peak_file"
    wait "$sampler" 2>/dev/null || true
    grep -E "^errors:" "$OUT/soak-$label.out" | sed "s/^/soak $label /" | tee -a "$SUMMARY"
    for t in 0 5 10 15 20 25; do
        log "soak $label after_${t}s_kib=$(rss_kib "$pid")"
        sleep 5
    done
    stop "$pid"
}

for what in $WHAT; do
    case $what in
    users)
        for w in $WORKERS; do
            for t in "${TARGETS[@]}"; do retry users_run "${t%%:*}" "${t#*:}" "$w" 1000; done
        done
        for t in "${TARGETS[@]}"; do retry users_run "${t%%:*}" "${t#*:}" 16 0; done
        ;;
    stall) for t in "${TARGETS[@]}"; do retry stall_run "${t%%:*}" "${t#*:}"; done ;;
    soak) for t in "${TARGETS[@]}"; do retry soak_run "${t%%:*}" "${t#*:}"; done ;;
    *)
        echo "unknown: $what (users, stall, soak)" >&2
        exit 2
        ;;
    esac
done
echo "results: $OUT" >&2
