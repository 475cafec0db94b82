#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine too: installs what is missing (Debian
# packages via apt-get when run as root), then formatting, lints, unit, integration and
# interop tests, and a smoke run of the benches.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/xtaci/smux ] || need+=(golang-github-xtaci-smux-dev)
[ -d /usr/share/gocode/src/github.com/gorilla/websocket ] || need+=(golang-github-gorilla-websocket-dev)
# Real peers for the edge tests: nginx (fallback site, TLS front), HAProxy (PROXY
# protocol, and the benchmarks' reference relay), curl (probes).
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Operating it as a service (tests/it/service.rs): promtool (Debian's prometheus) checks /metrics
# and the alert rules, headless Chromium the /status page, systemd-analyze the unit, man
# the man page; adduser is what the package's postinst uses.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "warning: missing ${need[*]}; run as root to install them (interop tests need them)" >&2
    fi
fi

# The official Prometheus text parser, used by the /metrics test.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "installing: prometheus-client (PyPI)"
    python3 -m pip install -q prometheus-client
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# The Debian package, built once (one release build) for tests/it/service.rs, which unpacks it,
# verifies its unit and runs the packaged binary; under CI it also installs, removes and
# purges it with dpkg.
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing: cargo-deb (crates.io)"
    cargo install --locked --quiet cargo-deb
fi
MTT_DEB=$(cargo deb --strip --quiet | tail -n 1)
[ -f "$MTT_DEB" ] || { echo "cargo deb made no package ($MTT_DEB)" >&2; exit 1; }
export MTT_DEB
echo "package: $MTT_DEB"
# The wire formats (src/proto) and flags (src/config) build without monoio: no I/O there.
cargo check --lib --no-default-features
cargo test --workspace --no-fail-fast
# Each criterion bench once, in test mode: a broken bench fails here. Built in the test
# profile (its dependencies are built already): the optimised bench profile cost CI almost
# three minutes of compiling for the same check.
if compgen -G "benches/*.rs" >/dev/null; then
    cargo test --benches
fi

# The thin route handle (src/control/routes.rs) is unsafe code: run its tests under Miri
# when a nightly toolchain with Miri can be had (rustup fetches it where its server is
# reachable). Where it cannot, say so; the command is documented in README.md.
if [ "${SKIP_MIRI:-0}" != 1 ] && command -v rustup >/dev/null 2>&1 &&
    { cargo +nightly miri --version >/dev/null 2>&1 ||
        timeout 600 rustup toolchain install nightly --profile minimal --component miri,rust-src >/dev/null 2>&1; }; then
    MIRIFLAGS="${MIRIFLAGS:-}" cargo +nightly miri test --lib -- control::routes
else
    echo "skipped: Miri (no nightly toolchain with Miri here); run: cargo +nightly miri test --lib -- control::routes"
fi
