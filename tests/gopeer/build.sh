#!/bin/sh
# Build the Go test peer: tests/gopeer/build.sh OUTPUT_PATH
# Needs Debian's golang-go, golang-github-xtaci-smux-dev and
# golang-github-gorilla-websocket-dev (GOPATH mode; installs nothing).
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTPUT_PATH" >&2
    exit 2
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' not found. Install: apt-get install -y golang-go" \
        "golang-github-xtaci-smux-dev golang-github-gorilla-websocket-dev" >&2
    exit 1
fi
GOPATH_DIR=/usr/share/gocode
for pkg in github.com/xtaci/smux github.com/gorilla/websocket; do
    if [ ! -d "$GOPATH_DIR/src/$pkg" ]; then
        echo "build.sh: Go package $pkg missing under $GOPATH_DIR/src." \
            "Install: apt-get install -y golang-github-xtaci-smux-dev" \
            "golang-github-gorilla-websocket-dev" >&2
        exit 1
    fi
done
out=$1
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
here=$(cd "$(dirname "$0")" && pwd)
# The build cache must be writable even where HOME is not.
: "${GOCACHE:=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/go-build}"
mkdir -p "$GOCACHE" 2>/dev/null || GOCACHE=/tmp/gopeer-gocache
export GOCACHE
cd "$here"
GO111MODULE=off GOPATH=$GOPATH_DIR GOFLAGS= go build -o "$out" .
