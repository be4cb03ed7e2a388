#!/usr/bin/env bash
# Provision one shoal node: install what shoal needs, install shoal from the source tree, start
# shoald, then `swarm init` (first manager) or `swarm join` (everyone else) with tokens passed
# through a shared directory. Vagrant runs it in every VM; the QEMU lab (integration/vm/) runs
# the very same script in its guests. Safe to run again: it installs only what is missing and a
# node already in a swarm stays in it.
#
# Environment:
#   SHOAL_ROLE           manager | worker
#   SHOAL_ADVERTISE_ADDR this node's address on the private network
#   SHOAL_MANAGER_ADDR   the first manager's address; the node with that address runs init
#   SHOAL_TOKEN_DIR      shared directory for the join tokens   [/vagrant/vagrant/.tokens]
#   SHOAL_SRC            shoal's source tree                     [/vagrant]
#   SHOAL_OPTS           extra shoald flags, e.g. "--lb-backend nftables"
#   SHOAL_JOIN_TIMEOUT   seconds a joiner waits for tokens and the manager   [900]
#   SHOAL_LAST           1 on the last node: print the cluster and how to deploy a service
set -euo pipefail

ROLE=${SHOAL_ROLE:?set SHOAL_ROLE to manager or worker}
ADDR=${SHOAL_ADVERTISE_ADDR:?set SHOAL_ADVERTISE_ADDR}
MANAGER=${SHOAL_MANAGER_ADDR:?set SHOAL_MANAGER_ADDR}
TOKENS=${SHOAL_TOKEN_DIR:-/vagrant/vagrant/.tokens}
SRC=${SHOAL_SRC:-/vagrant}
OPTS=${SHOAL_OPTS:-}
JOIN_TIMEOUT=${SHOAL_JOIN_TIMEOUT:-900}
PREFIX=/opt/shoal
VENV=$PREFIX/venv
say() { echo "provision[$(hostname)]: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "provision: run as root" >&2; exit 1; }
case "$ROLE" in manager|worker) ;; *) echo "provision: SHOAL_ROLE=$ROLE is not manager or worker" >&2; exit 2;; esac
[ -f "$SRC/pyproject.toml" ] || { echo "provision: no shoal source tree at $SRC" >&2; exit 1; }

# --- Debian packages: only the missing ones, so a prepared image needs no network ---------------
# ipvsadm is for looking at the IPVS load balancer; shoal itself talks netlink. tini is the init
# of `--init` containers.
PACKAGES=(python3 python3-venv iproute2 nftables ipvsadm runc busybox-static procps kmod tini)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernel modules: loaded now and at every boot -----------------------------------------------
# IPVS must be loaded for shoald's "auto" load balancer to see it (/proc/net/ip_vs appears with
# the module); vxlan and macvlan (tasks' interfaces on it), bridge and overlay are what overlay
# networks and containers use.
MODULES=(ip_vs ip_vs_rr nf_conntrack vxlan macvlan bridge br_netfilter overlay)
: > /etc/modules-load.d/shoal.conf
for m in "${MODULES[@]}"; do
    if modprobe "$m" 2>/dev/null; then
        echo "$m" >> /etc/modules-load.d/shoal.conf
    else
        say "kernel module $m is not available (shoal falls back where it can)"
    fi
done

# --- shoal from the source tree ----------------------------------------------------------------
# Built from a private copy: the synced tree may be read-only, and pip builds in place.
rm -rf "$PREFIX/src.new"
mkdir -p "$PREFIX/src.new"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./vagrant/.vagrant \
    --exclude=./vagrant/.tokens --exclude='*.egg-info' --exclude=./build --exclude=__pycache__ \
    --exclude=.pytest_cache -cf - . | tar -C "$PREFIX/src.new" -xf -
# pip costs a minute or more on a slow (emulated) CPU: skip it when the tree is what was installed
src_hash=$(cd "$PREFIX/src.new" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/shoald" ] && [ "$(cat "$PREFIX/installed-src" 2>/dev/null)" = "$src_hash" ]; then
    say "shoal from $SRC is installed already"
    rm -rf "$PREFIX/src.new"
else
    say "installing shoal from $SRC"
    rm -rf "$PREFIX/src"
    mv "$PREFIX/src.new" "$PREFIX/src"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    pipq=("$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir)
    # Offline first: a prepared image (the QEMU lab's) has every dependency and the build tools.
    if ! "${pipq[@]}" --no-index --no-build-isolation "$PREFIX/src" 2>/dev/null; then
        say "dependencies missing: installing them from the package index"
        "${pipq[@]}" "$PREFIX/src"
    fi
    echo "$src_hash" > "$PREFIX/installed-src"
fi
ln -sf "$VENV/bin/shoal" /usr/local/bin/shoal
ln -sf "$VENV/bin/shoald" /usr/local/bin/shoald

# --- shoald as a systemd service -----------------------------------------------------------------
cat > /etc/default/shoald.new <<EOF
SHOAL_ADVERTISE_ADDR=$ADDR
SHOAL_OPTS="$OPTS"
EOF
install -m 0644 "$PREFIX/src/packaging/shoald.service" /etc/systemd/system/shoald.service.new
changed=0
for f in /etc/default/shoald /etc/systemd/system/shoald.service; do
    if ! cmp -s "$f.new" "$f"; then mv "$f.new" "$f"; changed=1; else rm -f "$f.new"; fi
done
systemctl daemon-reload
systemctl enable shoald.service >/dev/null 2>&1
if [ "$changed" = 1 ] || ! systemctl is-active -q shoald; then
    systemctl restart shoald.service
fi
# Wait for the socket before asking the CLI: each CLI start costs seconds on a slow CPU.
info=
for _ in $(seq 120); do
    if [ -S /run/shoal/shoal.sock ] && info=$(shoal info --format json 2>/dev/null); then break; fi
    info=
    sleep 1
done
if [ -z "$info" ]; then
    journalctl -u shoald --no-pager -n 50 >&2 || true
    echo "provision: shoald did not answer on its socket" >&2
    exit 1
fi
state=$("$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["swarm"]["state"])' <<<"$info")

# --- swarm: init on the first manager, join everywhere else --------------------------------------
if [ "$state" = active ]; then
    say "already in a swarm"
elif [ "$ADDR" = "$MANAGER" ]; then
    say "swarm init --advertise-addr $ADDR"
    # tokens of an earlier cluster must not lure joiners to this one's predecessor
    rm -f "$TOKENS/worker" "$TOKENS/manager"
    shoal swarm init --advertise-addr "$ADDR"
    mkdir -p "$TOKENS"
    for kind in worker manager; do
        shoal swarm join-token -q "$kind" > "$TOKENS/$kind.tmp"
        mv "$TOKENS/$kind.tmp" "$TOKENS/$kind"   # joiners never read half a token
    done
else
    deadline=$((SECONDS + JOIN_TIMEOUT))
    say "joining $MANAGER as a $ROLE"
    until [ -s "$TOKENS/$ROLE" ] && shoal swarm join --token "$(cat "$TOKENS/$ROLE")" \
            --advertise-addr "$ADDR" "$MANAGER:2377"; do
        # the first manager may still be booting or may not have written fresh tokens yet
        if [ $SECONDS -ge $deadline ]; then
            echo "provision: could not join $MANAGER within ${JOIN_TIMEOUT}s" >&2
            exit 1
        fi
        sleep 3
    done
fi

if [ "${SHOAL_LAST:-0}" = 1 ]; then
    if [ "$ROLE" = manager ]; then shoal node ls || true; fi
    cat <<EOF

shoal is up. Deploy a first service from a manager (vagrant ssh manager1, then sudo -i):

  # Every node pulls the image when a task lands on it (the VMs reach the internet through
  # Vagrant's NAT interface). Offline: shoal image import FILE NAME:TAG on every node instead.
  shoal service create --name web --replicas 3 --publish 8080:80 registry-1.docker.io/library/nginx:alpine
  shoal service ps web
  busybox wget -qO- http://$ADDR:8080/   # any node's address answers (routing mesh)
  ipvsadm -Ln                            # the IPVS virtual service and one real server per task
EOF
fi
