#!/usr/bin/env bash
# Holds TOTAL idle TLS tunnels open on this machine at once and reports what they cost.
#
#   tools/many-tunnels.sh [TOTAL]          (default 100000)
#
# One server process holds two descriptors per tunnel (client and destination), so a
# process can hold at most (RLIMIT_NOFILE - a few) / 2 tunnels. Where the hard limit is too
# low for TOTAL in one process and cannot be raised (no CAP_SYS_RESOURCE), the tunnels are
# spread over as many server processes as needed, each a normal `mtt-mu-server -workers 2`
# on its own port with its own `loadgen sink` and `loadgen idle` client; the processes share
# the machine's two cores, memory and kernel. The script says which case it ran.
#
# Prints, with everything open: tunnels held, the servers' summed RSS and RSS per tunnel,
# and the kernel's socket memory (/proc/net/sockstat) and slab growth (/proc/meminfo).
# Only 127.0.0.1 is used; every process is stopped at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOTAL=${1:-100000}
OUT=${OUT:-$ROOT/target/many-tunnels}
mkdir -p "$OUT"
cargo build --release -q -p mtt-mu-server -p loadgen
BIN=$ROOT/target/release
HOLD=${HOLD:-600}

limit=$(ulimit -Hn)
ulimit -Sn "$limit"
# Descriptors a server needs besides tunnels: listeners, io_uring, eventfds, logs.
per_process=$(((limit - 200) / 2))
processes=$(((TOTAL + per_process - 1) / per_process))
per=$(((TOTAL + processes - 1) / processes))
echo "open files hard limit $limit: $processes server process(es) of $per tunnels" >&2

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
slab_before=$(meminfo Slab)
sockstat_before=$(awk '/^TCP:/ { print $NF }' /proc/net/sockstat)

servers=()
for i in $(seq 0 $((processes - 1))); do
    sink=$((19800 + i)) data=$((19900 + 2 * i)) ctl=$((19901 + 2 * i))
    "$BIN/loadgen" sink --threads 1 --listen "127.0.0.1:$sink" 2>"$OUT/sink-$i.log" &
    PIDS+=($!)
    "$BIN/mtt-mu-server" -b "127.0.0.1:$data" -c "127.0.0.1:$ctl" -force-tls -timeout 1h \
        2>"$OUT/server-$i.log" &
    PIDS+=($!)
    servers+=($!)
    for _ in $(seq 100); do
        grep -q "ready:" "$OUT/server-$i.log" 2>/dev/null && break
        sleep 0.1
    done
    curl -sf -X POST -d '{"opt":1,"args_bunch":[{"path":"/bench","dst":"127.0.0.1:'$sink'"}]}' \
        "http://127.0.0.1:$ctl/" >/dev/null
done

held=0
for i in $(seq 0 $((processes - 1))); do
    data=$((19900 + 2 * i))
    # Each client holds its tunnels for HOLD seconds after measuring, while the next opens.
    "$BIN/loadgen" idle --addr "127.0.0.1:$data" --proto wss --count "$per" --hold "$HOLD" \
        --server-pid "${servers[$i]}" --target "server-$i" >"$OUT/idle-$i.txt" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 600); do
        grep -q "RSS per tunnel" "$OUT/idle-$i.txt" 2>/dev/null && break
        sleep 0.5
    done
    grep "RSS per tunnel" "$OUT/idle-$i.txt" >&2 || { cat "$OUT/idle-$i.txt" >&2; exit 1; }
    held=$((held + per))
done

rss_kib=0
for pid in "${servers[@]}"; do
    rss_kib=$((rss_kib + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
done
open_tunnels=0
for i in $(seq 0 $((processes - 1))); do
    ctl=$((19901 + 2 * i))
    n=$(curl -sf "http://127.0.0.1:$ctl/metrics" |
        awk '/^mtt_tunnels_open\{.*kind="plain"/ { s += $2 } END { print s + 0 }')
    open_tunnels=$((open_tunnels + n))
done
slab_after=$(meminfo Slab)
sockstat_after=$(awk '/^TCP:/ { print $NF }' /proc/net/sockstat)
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "open files hard limit: $limit; server processes: $processes of $per tunnels"
    echo "tunnels open (the servers' mtt_tunnels_open, plain): $open_tunnels of $held"
    echo "servers' RSS: $((rss_kib / 1024)) MiB, $(awk -v r="$rss_kib" -v n="$held" 'BEGIN { printf "%.2f", r / n }') KiB per tunnel (each server's base included)"
    echo "kernel slab growth: $(((slab_after - slab_before) / 1024)) MiB"
    echo "kernel TCP memory (sockstat mem, pages): $sockstat_before -> $sockstat_after"
    echo "MemAvailable: $(($(meminfo MemAvailable) / 1024)) MiB"
} | tee "$OUT/summary.txt"
