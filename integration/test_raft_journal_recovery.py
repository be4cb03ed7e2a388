"""Issue 18, durable raft: a manager whose raft journal was damaged while it was down (a cut at a
random offset, as a crash mid-write leaves it, or a flipped byte) logs the truncation, rejoins
and catches up from the leader, on real shoald processes in namespace hosts.

The journal lives at <data-root>/raft/journal (manager/state/raft/node.py). The random offsets
come from a seed printed in every failure message, so a failure can be replayed."""
from __future__ import annotations

import os
import random
import re
import time

import pytest

from integration.helpers import leader_of, needs_root, node_table, unique_lab_name, wait_until
from manager.state.raft import records
from shoal.lab.netlab import Lab

pytestmark = [needs_root, pytest.mark.lab]

SEED = int.from_bytes(os.urandom(4), "big")


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique_lab_name("rj"))
    try:
        lab.up(managers=3, workers=0)
        yield lab
    finally:
        lab.down()  # the namespaces go with it, also on failure


def journal_records(path: str) -> list[tuple[int, int]]:
    """(start, end) of each record of a journal that is not open anywhere (read-only)."""
    with open(path, "rb") as f:
        data = f.read()
    salt = records.read_header(data, path)
    found = records.scan(lambda at, n: data[at:at + n], len(data), salt)
    assert found.damage is None, f"{path} was damaged before the test touched it: {found.damage}"
    return [(start, start + 8 + 16 + len(entry[0]))
            for start, entry in zip(found.offsets, found.entries)]


def raft_view(lab, host: str) -> dict:
    return lab.cli_json(host, "info")["swarm"]["raft"]


def label_writes(lab, host: str, target: str, prefix: str, n: int) -> None:
    for i in range(n):
        lab.cli(host, "node", "update", "--label-add", f"{prefix}{i}=v{i}", target)


def replicated_nodes(lab, host: str) -> dict:
    """`node ls` as the store has it: without what each manager sees from where it stands."""
    return {name: {k: v for k, v in row.items() if k not in ("self", "manager_status")}
            for name, row in node_table(lab, host).items()}


def managers_agree(lab, leader: str, hosts: list[str]) -> bool:
    """Every manager applied what the leader had applied when asked, and holds the same nodes."""
    target = raft_view(lab, leader)["applied_index"]
    if any(raft_view(lab, h)["applied_index"] < target for h in hosts):
        return False
    tables = [replicated_nodes(lab, h) for h in hosts]
    return all(t == tables[0] for t in tables)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_a_manager_with_a_damaged_journal_truncates_rejoins_and_catches_up(lab, damage):
    rng = random.Random(f"{SEED}-{damage}")
    why = f"(seed {SEED}, damage {damage})"
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    follower = next(h for h in ("manager1", "manager2", "manager3") if h != leader)
    label_writes(lab, leader, "manager1", f"{damage}-before-", 12)
    wait_until(lambda: managers_agree(lab, leader, ["manager1", "manager2", "manager3"]),
               timeout=30, what=f"the managers to agree before the damage {why}")

    lab.stop(follower)
    path = os.path.join(lab.host(follower).data_root, "raft", "journal")
    spans = journal_records(path)
    assert len(spans) >= 4, f"{path} holds only {len(spans)} entries {why}"
    # Into one of the last half of the records, never on a boundary (that would leave a
    # shorter but whole journal: nothing to detect).
    start, end = spans[rng.randrange(len(spans) // 2, len(spans))]
    at = rng.randrange(start + 1, end)
    if damage == "cut":
        os.truncate(path, at)
    else:
        with open(path, "r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ rng.randrange(1, 256)]))
    # Changes go on while it is down: it must fetch those too.
    label_writes(lab, leader, "manager2", f"{damage}-during-", 5)

    log_before = os.path.getsize(lab.host(follower).log)
    lab.start(follower)
    with open(lab.host(follower).log, "rb") as f:
        f.seek(log_before)
        started = f.read().decode(errors="replace")
    wanted = re.compile(rf"WARNING.*raft journal {re.escape(path)}: .* at offset {start}; "
                        rf"dropped \d+ bytes")
    assert wanted.search(started), f"no truncation line for offset {start} {why}:\n" \
                                   f"{started[-3000:]}"

    hosts = ["manager1", "manager2", "manager3"]
    wait_until(lambda: node_table(lab, leader)[follower]["manager_status"] == "reachable",
               timeout=30, what=f"{follower} reachable again {why}")
    label_writes(lab, leader, "manager3", f"{damage}-after-", 1)
    wait_until(lambda: managers_agree(lab, leader, hosts), timeout=60,
               what=f"{follower} to catch up with the leader {why}")
    labels = node_table(lab, follower)["manager2"]["labels"]
    assert {f"{damage}-during-{i}" for i in range(5)} <= set(labels), why
    # and the repaired journal opens clean: no second warning on another restart
    lab.stop(follower)
    log_before = os.path.getsize(lab.host(follower).log)
    lab.start(follower)
    time.sleep(1)
    with open(lab.host(follower).log, "rb") as f:
        f.seek(log_before)
        assert "raft journal" not in f.read().decode(errors="replace"), why
    wait_until(lambda: managers_agree(lab, leader, hosts), timeout=60,
               what=f"{follower} back after a clean restart {why}")
