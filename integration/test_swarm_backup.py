"""Online backup and restore on a lab of real shoald processes (3 managers + 2 workers, busybox
tasks): `swarm backup` is taken while a client keeps creating secrets; the whole control plane
is then lost, and `swarm restore` on a fresh host brings the swarm back with every object
acknowledged before the backup began; the workers find the new manager by themselves (it tells
them its address) and their tasks run on untouched. The file is 0600 and holds no secret in
clear; a wrong passphrase is refused and changes nothing.
"""
from __future__ import annotations

import json
import re
import secrets as pysecrets
import shutil
import threading
import time
from pathlib import Path

import pytest

from integration.helpers import busybox_lab, needs_root, node_table, wait_until
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

IMAGE = "busybox:1"
PASSPHRASE = "lab passphrase " + pysecrets.token_hex(4)
MARK = "bk-" + pysecrets.token_hex(8)   # in every secret's value, to grep the file for


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("bk", managers=3, workers=2, tags=[IMAGE]) as lab:
        yield lab


def running_containers(lab, worker: str) -> dict[str, int]:
    return {c["id"]: c["pid"] for c in lab.cli_json(worker, "container", "ls")
            if c["state"] == "running" and c.get("service")}


class SecretWriter(threading.Thread):
    """A client creating secrets in a loop through manager2; records what was acknowledged."""

    def __init__(self, lab) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.acked: list[tuple[str, float]] = []   # name, monotonic time of the acknowledgement
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            name = f"w{i:04d}"
            r = self.lab.exec("manager2", ["shoal", "secret", "create", name, "-"],
                              input=f"{MARK}-{i}", timeout=30)
            if r.returncode == 0:
                self.acked.append((name, time.monotonic()))
            i += 1


def test_backup_while_writing_then_restore_on_a_fresh_host(lab, tmp_path):
    lab.exec("manager1", ["shoal", "secret", "create", "dbpw", "-"], input=f"{MARK}-db",
             check=True)
    lab.cli("manager1", "service", "create", "--detach", "--name", "app", "--replicas", "2",
            "--constraint", "node.role==worker", "--secret", "dbpw", IMAGE, "sleep", "3600",
            timeout=60)
    wait_until(lambda: sum(len(running_containers(lab, w)) for w in ("worker1", "worker2")) == 2,
               timeout=90, what="both app tasks running")
    before = {w: running_containers(lab, w) for w in ("worker1", "worker2")}

    writer = SecretWriter(lab)
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 3, timeout=60, what="a few writes")
        backup = tmp_path / "swarm.bak"
        started = time.monotonic()
        r = lab.exec("manager3", ["shoal", "swarm", "backup", "-o", str(backup),
                                  "--passphrase-stdin"], input=PASSPHRASE + "\n", check=True,
                     timeout=120)
        count = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= count + 2, timeout=60, what="writes after it")
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    index = int(re.search(r"store index (\d+)", r.stdout).group(1))
    acked_before = {name for name, at in writer.acked if at < started}
    assert acked_before

    # The file: 0600, no secret's bytes in clear.
    assert backup.stat().st_mode & 0o777 == 0o600
    assert MARK.encode() not in backup.read_bytes()
    # Autolock is off: no passphrase, no backup (and no file).
    r = lab.exec("manager3", ["shoal", "swarm", "backup", "-o", str(tmp_path / "none.bak")])
    assert r.returncode != 0 and "--passphrase-stdin" in r.stderr
    assert not (tmp_path / "none.bak").exists()

    # The whole control plane is lost.
    for m in ("manager1", "manager2", "manager3"):
        lab.kill(m)
    fresh = lab.add_host("manager", join=False)
    addr = lab.host(fresh).address
    restore = ["shoal", "swarm", "restore", "-i", str(backup), "--advertise-addr", addr,
               "--passphrase-stdin"]

    # A wrong passphrase is refused, and the host stays as it was.
    r = lab.exec(fresh, restore, input="not the passphrase\n", timeout=60)
    assert r.returncode != 0 and "passphrase is wrong" in r.stderr
    assert not Path(lab.host(fresh).data_root, "state.json").exists()
    r = lab.cli(fresh, "node", "ls", check=False)
    assert r.returncode != 0 and "not part of a swarm" in r.stderr

    r = lab.exec(fresh, restore, input=PASSPHRASE + "\n", check=True, timeout=120)
    assert "Swarm restored" in r.stdout

    # Every write acknowledged before the backup started is there; nothing past its index.
    restored = {s["spec"]["name"]: s for s in lab.cli_json(fresh, "secret", "ls")}
    assert acked_before <= set(restored)
    assert "dbpw" in restored
    assert all(s["meta"]["version"] <= index for s in restored.values())
    assert [s["spec"]["name"] for s in lab.cli_json(fresh, "service", "ls")] == ["app"]

    # The workers reconnect to the new host (it told them its address) and their tasks ran on
    # untouched. The store says Ready from the backup already: only once the lost managers
    # are Down (3 missed heartbeat periods) does Ready mean heartbeats arrive.
    for w in ("worker1", "worker2"):
        wait_until(lambda: f"{addr}:2377" in json.loads(
            Path(lab.host(w).data_root, "state.json").read_text())["managers"],
            timeout=60, what=f"{w} to learn the new manager's address")
    # (manager3, the backup's source, lives on as the fresh host: same node id, its name.)
    wait_until(lambda: all(node_table(lab, fresh)[m]["status"] == "down"
                           for m in ("manager1", "manager2")),
               timeout=60, what="the lost managers to show Down")
    table = node_table(lab, fresh)
    assert table[fresh]["manager_status"] == "leader" and "manager3" not in table
    assert (table["manager1"]["role"], table["manager2"]["role"]) == ("worker", "worker")
    assert all(table[w]["status"] == "ready" for w in ("worker1", "worker2"))
    lab.cli(fresh, "service", "scale", "app=3", timeout=60)

    def three_running():
        ts = [t for t in lab.cli_json(fresh, "service", "ps", "app")
              if t["desired_state"] == "running" and t["status"]["state"] == "running"]
        return ts if len(ts) == 3 else None
    wait_until(three_running, timeout=90, what="three app tasks running")
    for w, containers in before.items():
        now = running_containers(lab, w)
        for task_id, pid in containers.items():
            assert now.get(task_id) == pid, f"{w}: task {task_id} was restarted or stopped"

    # A restore on a host that is already in a swarm is refused with the fix.
    r = lab.exec(fresh, restore, input=PASSPHRASE + "\n", timeout=60)
    assert r.returncode != 0 and "swarm leave --force" in r.stderr



def test_autolocked_swarm_backup_opens_with_the_unlock_key_and_restores_locked(tmp_path):
    """With autolock on and no passphrase the unlock key encrypts the backup; a restore needs
    that key, refuses another, and the restored manager comes up locked after a restart."""
    from shoal.lab.netlab import Lab
    from integration.helpers import unique_lab_name
    lab = Lab(unique_lab_name("bkl"))
    try:
        lab.up(managers=1, workers=1)
        out = lab.cli("manager1", "swarm", "update", "--autolock", "true").stdout
        key = re.search(r"SHLKEY-1-[A-Z2-7]+", out).group(0)
        backup = tmp_path / "locked.bak"
        r = lab.cli("manager1", "swarm", "backup", "-o", str(backup), timeout=120)
        assert "unlock key" in r.stdout
        assert key.encode() not in backup.read_bytes()
        lab.kill("manager1")
        fresh = lab.add_host("manager", join=False)
        restore = ["shoal", "swarm", "restore", "-i", str(backup), "--advertise-addr",
                   lab.host(fresh).address, "--passphrase-stdin"]
        r = lab.exec(fresh, restore[:-1], timeout=60)
        assert r.returncode != 0 and "unlock key" in r.stderr and "--passphrase-stdin" in r.stderr
        from common.keywrap import UnlockKey
        r = lab.exec(fresh, restore, input=str(UnlockKey.generate()) + "\n", timeout=60)
        assert r.returncode != 0 and "unlock key whose id" in r.stderr
        assert not Path(lab.host(fresh).data_root, "state.json").exists()
        lab.exec(fresh, restore, input=key + "\n", check=True, timeout=120)
        wait_until(lambda: f"{lab.host(fresh).address}:2377" in json.loads(
            Path(lab.host("worker1").data_root, "state.json").read_text())["managers"],
            timeout=60, what="worker1 to learn the new manager's address")
        # Sealed at once: a restart comes up locked, and the swarm's key unlocks it.
        lab.stop(fresh)
        lab.start(fresh)
        r = lab.cli(fresh, "node", "ls", check=False)
        assert r.returncode != 0 and "locked" in r.stderr
        lab.exec(fresh, ["shoal", "swarm", "unlock"], input=key + "\n", check=True, timeout=60)
        wait_until(lambda: node_table(lab, fresh)["worker1"]["status"] == "ready", timeout=60,
                   what="worker1 ready")
    finally:
        lab.down()
