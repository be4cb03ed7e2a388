#!/usr/bin/env bash
# The main job in one command: install what is needed, bring up a local multi-host lab
# (3 managers + 2 workers, each a network namespace running a real shoald), show the cluster,
# then kill the leader and show another manager take over. The lab stays up for you to play
# with: `.venv/bin/shoal lab exec manager1 -- shoal node ls`; remove it with
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
