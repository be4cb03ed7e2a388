#!/usr/bin/env bash
# Install what shoal needs on a Debian 12 machine (as root) and the package itself in .venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (shoal manages namespaces, mounts and containers)" >&2
    exit 1
fi

# runc, busybox-static, nftables and docker-registry are for containers, images and load
# balancing; tini is the init of `--init` containers (as docker-init is Docker's);
# iproute2/iputils-ping/procps for the namespace lab and its tests; iperf3 for
# bench/network_bench.py.
APT_PACKAGES=(python3 python3-venv python3-pip iproute2 iputils-ping procps nftables runc
              busybox-static docker-registry ca-certificates bc iperf3 tini)
APT_PACKAGES+=(skopeo)  # image save read back by skopeo (tests/test_image_commands.py)
APT_PACKAGES+=(chromium)  # the dashboard in a real browser (integration/observability/test_4_dashboard.py)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the registry it ships on every interface; the tests run their own on
    # loopback. Stop the one we just installed (an existing registry is left alone).
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
fi

# The docker CLI, for the tests of the Docker Engine API (integration/test_docker_cli.py): only
# the `docker` binary of Debian's docker.io, unpacked beside the system and never installed, so
# no dockerd, containerd or docker group ever comes with it.
DOCKER_CLI_DIR=/opt/shoal-test/docker-cli
if [ ! -x "$DOCKER_CLI_DIR/usr/bin/docker" ]; then
    echo "setup: unpacking the docker CLI (Debian's docker.io) into $DOCKER_CLI_DIR"
    tmp=$(mktemp -d)
    ( cd "$tmp" && apt-get download -qq docker.io >/dev/null 2>&1 ) || {
        apt-get update -qq && ( cd "$tmp" && apt-get download -qq docker.io >/dev/null ); }
    rm -rf "$DOCKER_CLI_DIR.new"; mkdir -p "$DOCKER_CLI_DIR.new"
    dpkg-deb -x "$tmp"/docker.io_*.deb "$DOCKER_CLI_DIR.new"
    rm -rf "$tmp" "$DOCKER_CLI_DIR"
    mv "$DOCKER_CLI_DIR.new" "$DOCKER_CLI_DIR"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.shoal-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log=$(mktemp)
    if ! { .venv/bin/python -m pip install -q --upgrade pip && \
           .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        echo "setup: installing the Python package failed (output above)" >&2
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/python --version), shoal $(.venv/bin/python -c 'import shoal; print(shoal.__version__)'))"
