#!/usr/bin/env bash
# The main job in one command: install what is needed, bring up a local multi-host lab
# (3 managers + 2 workers, each a network namespace running a real shoald), deploy a service
# of 6 replicas as runc containers, kill one of its containers and a leader, and watch the
# cluster repair both. The lab stays up for you to play with:
# `.venv/bin/shoal lab exec --name demo manager1 -- shoal service ps web`; remove it with
# `.venv/bin/shoal lab down --name demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SHOAL=.venv/bin/shoal
$SHOAL lab down --name demo >/dev/null 2>&1 || true
$SHOAL lab up --name demo --managers 3 --workers 2
lab_exec() { $SHOAL lab exec --name demo "$@"; }

echo
echo "== the swarm, seen from manager2"
lab_exec manager2 -- shoal node ls

echo
echo "== an image built from Debian's busybox-static, imported on every host"
img=$(mktemp -d)
trap 'rm -rf "$img"' EXIT
.venv/bin/python -c "import sys; from pathlib import Path; from tests.imagebuild import build_busybox_oci_layout as b; b(Path(sys.argv[1]), tag='1')" "$img/busybox"
for h in manager1 manager2 manager3 worker1 worker2; do lab_exec "$h" -- shoal image import "$img/busybox" busybox:1; done

echo
echo "== deploy: 6 replicas of a web server, on the workers"
lab_exec manager1 -- shoal service create --name web --replicas 6 --constraint node.role==worker \
    busybox:1 httpd -f -p 80
lab_exec manager1 -- shoal service ps web
echo
echo "== SIGKILL one of its containers on worker1: the slot gets a new task"
pid=$(lab_exec worker1 -- shoal container ls --format json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["pid"])')
kill -9 "$pid"
sleep 7
lab_exec manager1 -- shoal service ps web

leader=$(lab_exec manager1 -- shoal node ls --format json |
         .venv/bin/python -c 'import json,sys; print(next(n["hostname"] for n in json.load(sys.stdin) if n["manager_status"] == "leader"))')
other=$([ "$leader" = manager1 ] && echo manager2 || echo manager1)
echo
echo "== SIGKILL the leader ($leader), then write through $other"
$SHOAL lab kill --name demo "$leader"
start=$(date +%s.%N)
until lab_exec "$other" -- shoal node update --label-add demo=failover worker1 >/dev/null 2>&1; do sleep 0.1; done
echo "a write succeeded $(echo "$(date +%s.%N) - $start" | bc -l | cut -c1-4)s after the kill"
lab_exec "$other" -- shoal node ls
echo
echo "== restart $leader: it rejoins as a follower with the same state"
$SHOAL lab start --name demo "$leader"
sleep 3
lab_exec "$leader" -- shoal node inspect --pretty worker1
echo "The lab is still up. Try: $SHOAL lab exec --name demo manager1 -- shoal node ls"
echo "Remove it with:          $SHOAL lab down --name demo"
