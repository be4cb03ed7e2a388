"""Autolock on real shoald processes: 3 managers and a worker in namespace hosts.

A restarted manager of an autolocked swarm refuses service until `shoal swarm unlock` gets the
right key; a wrong key is refused; rotation works (including for a manager that was down during
it); turning autolock off makes a restart come up unlocked. The tests build on each other's
state and run in file order.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import keywrap
from common.keywrap import UnlockKey
from integration.helpers import needs_root, node_table, unique_lab_name, wait_until
from shoal.lab.netlab import Lab

pytestmark = [needs_root, pytest.mark.lab]

MANAGERS = ["manager1", "manager2", "manager3"]
KEY_RE = re.compile(r"SHLKEY-1-[A-Z2-7]+")


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique_lab_name("alk"))
    try:
        lab.up(managers=3, workers=1, form=False)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    """The unlock keys the tests learn as they go ("current", "old")."""
    return {}


def certs(lab, host: str) -> Path:
    return Path(lab.host(host).data_root) / "certificates"


def sealed_key_id(lab, host: str) -> str | None:
    bundle = certs(lab, host) / "keys.sealed"
    if not bundle.exists() or (certs(lab, host) / "raft-secret").exists():
        return None
    return keywrap.bundle_key_id(bundle.read_bytes())


def unlock(lab, host: str, key: str):
    # Not a tty: the CLI reads the key from stdin, as a script would pipe it.
    return lab.exec(host, ["shoal", "swarm", "unlock"], input=key + "\n", timeout=60)


def error_of(result) -> str:
    assert result.returncode != 0, f"expected a failure, got: {result.stdout}"
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert lines, "a failure must say why"
    return lines[-1]


def restart(lab, host: str) -> None:
    lab.stop(host)
    lab.start(host)


def assert_locked(lab, host: str) -> None:
    for args in (("service", "ls"), ("node", "ls"), ("swarm", "inspect")):
        message = error_of(lab.cli(host, *args, check=False))
        assert "this node is locked" in message and "shoal swarm unlock" in message, message
    assert lab.cli_json(host, "info")["swarm"]["state"] == "locked"
    assert "Swarm: locked" in lab.cli(host, "info").stdout


def serves_again(lab, host: str) -> None:
    wait_until(lambda: lab.cli(host, "service", "ls", check=False).returncode == 0, timeout=60,
               what=f"{host} to serve `service ls`")
    wait_until(lambda: (n := node_table(lab, "manager1")[host])["manager_status"]
               in ("reachable", "leader") and n["status"] == "ready", timeout=60,
               what=f"{host} reachable and ready again")
    assert lab.cli_json(host, "info")["swarm"]["state"] == "active"


def test_init_with_autolock_prints_the_key_and_seals_every_manager(lab, keys):
    addr = lab.host("manager1").address
    out = lab.cli("manager1", "swarm", "init", "--advertise-addr", addr, "--autolock").stdout
    assert "shoal swarm unlock" in out and "password manager" in out
    keys["current"] = KEY_RE.search(out).group(0)
    manager_token = lab.cli("manager1", "swarm", "join-token", "-q", "manager").stdout.strip()
    worker_token = lab.cli("manager1", "swarm", "join-token", "-q", "worker").stdout.strip()
    for host in ("manager2", "manager3"):  # one raft membership change at a time
        lab.cli(host, "swarm", "join", "--token", manager_token, "--advertise-addr",
                lab.host(host).address, f"{addr}:2377", timeout=120)
        wait_until(lambda: node_table(lab, "manager1").get(host, {}).get("manager_status")
                   == "reachable", timeout=60, what=f"{host} to join raft")
    lab.cli("worker1", "swarm", "join", "--token", worker_token, "--advertise-addr",
            lab.host("worker1").address, f"{addr}:2377", timeout=120)
    wait_until(lambda: len(t := node_table(lab, "manager1")) == 4
               and all(n["status"] == "ready" for n in t.values()), timeout=60,
               what="4 ready nodes")

    key_id = UnlockKey.parse(keys["current"]).key_id
    for host in MANAGERS:
        # The key is replicated: every manager knows it and seals its own secrets with it.
        assert lab.cli(host, "swarm", "unlock-key", "-q").stdout.strip() == keys["current"]
        wait_until(lambda: sealed_key_id(lab, host) == key_id, timeout=30,
                   what=f"{host} to seal its secrets")
        assert not (certs(lab, host) / "node.key").exists()
    # Workers are never locked; the key is not part of the swarm's public view.
    assert (certs(lab, "worker1") / "node.key").exists()
    assert not (certs(lab, "worker1") / "keys.sealed").exists()
    inspect = lab.cli("manager1", "swarm", "inspect").stdout
    assert keys["current"] not in inspect and '"auto_lock_managers": true' in inspect
    assert "Autolock Managers: true" in lab.cli("manager2", "swarm", "inspect", "--format",
                                                "pretty").stdout


def test_a_restarted_manager_is_locked_and_its_secrets_are_not_on_disk(lab, keys):
    restart(lab, "manager3")
    assert_locked(lab, "manager3")
    wait_until(lambda: node_table(lab, "manager1")["manager3"]["manager_status"] == "unreachable",
               timeout=30, what="manager3 unreachable while locked")
    # Open the bundle with the key to learn the real raft secret, then look for it everywhere.
    sealed = keywrap.open_bundle(UnlockKey.parse(keys["current"]),
                                 (certs(lab, "manager3") / "keys.sealed").read_bytes())
    secret = sealed["raft-secret"]
    assert len(secret) == 32 and b"PRIVATE KEY" in sealed["node.key"]
    root = Path(lab.host("manager3").data_root)
    files = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size < 64 << 20]
    assert any(p.parent.name == "raft" for p in files), "the raft journal should be on disk"
    for path in files:
        data = path.read_bytes()
        assert secret not in data and secret.hex().encode() not in data, path
        assert b"PRIVATE KEY" not in data, path


def test_a_wrong_key_is_refused_and_changes_nothing(lab, keys):
    before = (certs(lab, "manager3") / "keys.sealed").read_bytes()
    message = error_of(unlock(lab, "manager3", str(UnlockKey.generate())))
    assert "unlock key is wrong" in message, message
    message = error_of(unlock(lab, "manager3", keys["current"][:-2]))
    assert "malformed" in message, message
    assert (certs(lab, "manager3") / "keys.sealed").read_bytes() == before
    assert_locked(lab, "manager3")


def test_the_right_key_unlocks_and_the_manager_rejoins(lab, keys):
    r = unlock(lab, "manager3", keys["current"])
    assert r.returncode == 0, r.stderr
    serves_again(lab, "manager3")
    assert "not locked" in error_of(unlock(lab, "manager3", keys["current"]))
    # Still sealed on disk while it runs.
    assert sealed_key_id(lab, "manager3") == UnlockKey.parse(keys["current"]).key_id


def test_rotation_and_a_manager_that_was_down_during_it(lab, keys):
    old = keys["current"]
    lab.stop("manager2")
    out = lab.cli("manager1", "swarm", "unlock-key", "--rotate").stdout
    assert "Successfully rotated" in out
    new = KEY_RE.search(out).group(0)
    assert new != old
    keys.update(current=new, old=old)
    new_id = UnlockKey.parse(new).key_id
    for host in ("manager1", "manager3"):
        wait_until(lambda: sealed_key_id(lab, host) == new_id, timeout=30,
                   what=f"{host} to reseal under the new key")
        assert lab.cli(host, "swarm", "unlock-key", "-q").stdout.strip() == new

    # manager2 was down: it is still sealed with the old key, and says where to find it.
    lab.start("manager2")
    assert_locked(lab, "manager2")
    message = error_of(unlock(lab, "manager2", new))
    assert "unlock key is wrong" in message and "--previous" in message, message
    assert lab.cli("manager1", "swarm", "unlock-key", "--previous", "-q").stdout.strip() == old
    r = unlock(lab, "manager2", old)
    assert r.returncode == 0, r.stderr
    serves_again(lab, "manager2")
    # Once it has caught up it reseals under the current key.
    wait_until(lambda: sealed_key_id(lab, "manager2") == new_id, timeout=60,
               what="manager2 to reseal under the new key")


def test_after_rotation_a_restart_refuses_the_old_key_and_takes_the_new(lab, keys):
    restart(lab, "manager3")
    assert_locked(lab, "manager3")
    assert "unlock key is wrong" in error_of(unlock(lab, "manager3", keys["old"]))
    assert_locked(lab, "manager3")
    r = unlock(lab, "manager3", keys["current"])
    assert r.returncode == 0, r.stderr
    serves_again(lab, "manager3")


def test_turning_autolock_off_makes_a_restart_come_up_unlocked(lab, keys):
    out = lab.cli("manager1", "swarm", "update", "--autolock=false").stdout
    assert "Swarm updated." in out and not KEY_RE.search(out)
    for host in MANAGERS:
        wait_until(lambda: (certs(lab, host) / "raft-secret").exists()
                   and (certs(lab, host) / "node.key").exists()
                   and not (certs(lab, host) / "keys.sealed").exists(), timeout=30,
                   what=f"{host} to put its secrets back in plain files")
        assert (certs(lab, host) / "raft-secret").stat().st_mode & 0o777 == 0o600
    message = error_of(lab.cli("manager1", "swarm", "unlock-key", check=False))
    assert "autolock is off" in message, message
    restart(lab, "manager3")
    assert lab.cli_json("manager3", "info")["swarm"]["state"] == "active"
    serves_again(lab, "manager3")
    # And back on: a fresh key is printed once.
    out = lab.cli("manager1", "swarm", "update", "--autolock=true").stdout
    fresh = KEY_RE.search(out).group(0)
    assert fresh not in (keys["current"], keys["old"])
    wait_until(lambda: sealed_key_id(lab, "manager3") == UnlockKey.parse(fresh).key_id,
               timeout=30, what="manager3 to seal again")
