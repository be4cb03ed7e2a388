"""Autolock pieces on their own: the unlock key's text form, the sealed key bundle, a node's
files going from plain to sealed and back, and the cluster's unlock keys on update."""
from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from common import errors, keywrap
from common.keywrap import NodeLocked, UnlockKey, WrongUnlockKey
from common.model import Cluster
from common.nodestate import NodeFiles
from manager.controlapi import autolock
from manager.state.raft.cipher import DataCipher

RAFT_SECRET = os.urandom(32)
TLS_KEY = b"-----BEGIN PRIVATE KEY-----\nnot-a-real-key-but-secret\n-----END PRIVATE KEY-----\n"


# ---- the key's text form -----------------------------------------------------------------------
def test_key_text_round_trips_and_tolerates_case_and_blanks():
    key = UnlockKey.generate()
    text = str(key)
    assert text.startswith("SHLKEY-1-") and len(key.raw) == 32
    assert UnlockKey.parse(text) == key
    assert UnlockKey.parse(f"  {text.lower()}\n") == key
    assert UnlockKey.generate() != key
    # The id names the key but does not reveal it.
    assert len(key.key_id) == 16 and key.key_id not in text and key.raw.hex() not in repr(key)


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1],                                        # a character missing
    lambda t: t[:-3] + ("A" if t[-3] != "A" else "B") + t[-2:],  # one mistyped
    lambda t: t + "A",                                       # one too many
])
def test_a_mistyped_key_is_malformed_not_wrong(mangle):
    text = str(UnlockKey.generate())
    with pytest.raises(errors.InvalidArgument, match="malformed") as info:
        UnlockKey.parse(mangle(text))
    assert info.value.field == "unlock_key"


@pytest.mark.parametrize("text, match", [
    ("", "no unlock key given"),
    ("SWMKEY-1-abcdef", "must start with SHLKEY-1-"),
    ("SHLKEY-1-!!!!", "malformed"),
])
def test_junk_is_refused_with_a_message_that_names_the_fix(text, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        UnlockKey.parse(text)


# ---- the sealed bundle ---------------------------------------------------------------------------
def test_bundle_opens_with_its_key_only():
    key, other = UnlockKey.generate(), UnlockKey.generate()
    blob = keywrap.seal_bundle(key, {"raft-secret": RAFT_SECRET, "node.key": TLS_KEY})
    assert RAFT_SECRET not in blob and RAFT_SECRET.hex().encode() not in blob
    assert b"PRIVATE KEY" not in blob and b"not-a-real-key" not in blob
    assert keywrap.bundle_key_id(blob) == key.key_id
    assert keywrap.open_bundle(key, blob) == {"raft-secret": RAFT_SECRET, "node.key": TLS_KEY}
    with pytest.raises(WrongUnlockKey) as info:
        keywrap.open_bundle(other, blob)
    # The message tells which key the node wants, and where the previous one is.
    assert key.key_id in info.value.message and other.key_id in info.value.message
    assert "--previous" in info.value.message
    # Sealing twice never repeats salt or nonce.
    assert keywrap.seal_bundle(key, {"x": b"1"}) != keywrap.seal_bundle(key, {"x": b"1"})


def test_a_tampered_bundle_is_damaged_even_for_the_right_key():
    key = UnlockKey.generate()
    header = json.loads(keywrap.seal_bundle(key, {"raft-secret": RAFT_SECRET}))
    sealed = bytearray(base64.b64decode(header["ciphertext"]))
    sealed[0] ^= 1
    header["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    with pytest.raises(errors.FailedPrecondition, match="damaged"):
        keywrap.open_bundle(key, json.dumps(header).encode())
    with pytest.raises(errors.FailedPrecondition, match="not a shoal-key-bundle"):
        keywrap.open_bundle(key, b"\x00" * 40)


# ---- a node's files --------------------------------------------------------------------------
def _files(root: Path) -> NodeFiles:
    files = NodeFiles(root)
    files.prepare()
    files.save_certs(b"ca", b"cert", TLS_KEY)
    files.save_raft_secret(RAFT_SECRET)
    return files


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sealing_leaves_no_plaintext_and_a_restart_is_locked(tmp_path):
    key = UnlockKey.generate()
    files = _files(tmp_path)
    assert files.sealed_with() == "" and not files.is_locked()
    files.reseal(key)
    assert files.sealed_with() == key.key_id
    assert not (tmp_path / "certificates" / "raft-secret").exists()
    assert not (tmp_path / "certificates" / "node.key").exists()
    assert stat.S_IMODE(files.bundle_file.stat().st_mode) == 0o600
    disk = _all_bytes(tmp_path)
    assert RAFT_SECRET not in disk and RAFT_SECRET.hex().encode() not in disk
    assert b"PRIVATE KEY" not in disk
    # The running node still reads both through the bundle.
    assert files.load_raft_secret() == RAFT_SECRET and files.load_certs()[2] == TLS_KEY

    restarted = NodeFiles(tmp_path)
    assert restarted.is_locked()
    with pytest.raises(NodeLocked, match="shoal swarm unlock"):
        restarted.load_raft_secret()
    with pytest.raises(NodeLocked):
        restarted.load_certs()


def test_a_wrong_key_changes_nothing_and_the_right_key_unlocks(tmp_path):
    key = UnlockKey.generate()
    _files(tmp_path).reseal(key)
    before = _snapshot(tmp_path)
    node = NodeFiles(tmp_path)
    with pytest.raises(WrongUnlockKey):
        node.unlock(UnlockKey.generate())
    assert node.is_locked() and _snapshot(tmp_path) == before
    node.unlock(key)
    assert not node.is_locked()
    assert node.load_raft_secret() == RAFT_SECRET and node.load_certs()[2] == TLS_KEY
    # The data key raft derives is the same as before the lock.
    blob = DataCipher(RAFT_SECRET).seal(b"entry")
    assert DataCipher(node.load_raft_secret()).open(blob) == b"entry"


def test_rotation_reseals_and_the_old_key_is_refused_after_it(tmp_path):
    old, new = UnlockKey.generate(), UnlockKey.generate()
    files = _files(tmp_path)
    files.reseal(old)
    files.reseal(new)
    assert files.sealed_with() == new.key_id
    node = NodeFiles(tmp_path)
    with pytest.raises(WrongUnlockKey, match=new.key_id):
        node.unlock(old)
    node.unlock(new)
    assert node.load_raft_secret() == RAFT_SECRET


def test_a_renewed_certificate_key_goes_into_the_bundle(tmp_path):
    key = UnlockKey.generate()
    files = _files(tmp_path)
    files.reseal(key)
    renewed = TLS_KEY.replace(b"secret", b"renewed")
    files.save_certs(b"ca", b"cert2", renewed)
    assert not (tmp_path / "certificates" / "node.key").exists()
    assert b"renewed" not in _all_bytes(tmp_path)
    node = NodeFiles(tmp_path)
    node.unlock(key)
    assert node.load_certs() == (b"ca", b"cert2", renewed)
    assert node.load_raft_secret() == RAFT_SECRET


def test_turning_autolock_off_puts_plain_private_files_back(tmp_path):
    key = UnlockKey.generate()
    files = _files(tmp_path)
    files.reseal(key)
    files.reseal(None)
    assert files.sealed_with() == "" and not files.bundle_file.exists()
    for name, value in (("raft-secret", RAFT_SECRET), ("node.key", TLS_KEY)):
        path = tmp_path / "certificates" / name
        assert path.read_bytes() == value and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not NodeFiles(tmp_path).is_locked()


def test_a_crash_between_writing_the_bundle_and_removing_plain_files_is_repaired(tmp_path):
    key = UnlockKey.generate()
    files = _files(tmp_path)
    files.bundle_file.write_bytes(keywrap.seal_bundle(key, {"raft-secret": RAFT_SECRET,
                                                            "node.key": TLS_KEY}))
    restarted = NodeFiles(tmp_path)
    # Plain files win: the node is not locked, and the reseal loop sees it is half-done.
    assert not restarted.is_locked() and restarted.sealed_with() is None
    assert restarted.load_raft_secret() == RAFT_SECRET
    restarted.reseal(key)
    assert restarted.sealed_with() == key.key_id


def test_demotion_unseals_the_tls_key_and_forgets_the_raft_secret(tmp_path):
    key = UnlockKey.generate()
    files = _files(tmp_path)
    files.reseal(key)
    files.wipe_raft()
    assert not files.bundle_file.exists() and not files.is_locked()
    assert (tmp_path / "certificates" / "node.key").read_bytes() == TLS_KEY
    assert RAFT_SECRET not in _all_bytes(tmp_path)


# ---- the cluster's unlock keys ------------------------------------------------------------------
def test_swarm_update_makes_rotates_and_drops_keys():
    cluster = Cluster(id="c")
    assert autolock.apply_swarm_update(cluster, rotate=False) is None
    assert cluster.unlock_keys.current == ""
    with pytest.raises(errors.FailedPrecondition, match="autolock is off"):
        autolock.apply_swarm_update(cluster, rotate=True)

    cluster.spec.encryption_config.auto_lock_managers = True
    first = autolock.apply_swarm_update(cluster, rotate=False)
    assert first and cluster.unlock_keys.current == first
    assert autolock.apply_swarm_update(cluster, rotate=False) is None  # unrelated update
    assert cluster.unlock_keys.current == first

    second = autolock.apply_swarm_update(cluster, rotate=True)
    assert second not in ("", first)
    assert (cluster.unlock_keys.current, cluster.unlock_keys.previous) == (second, first)

    cluster.spec.encryption_config.auto_lock_managers = False
    assert autolock.apply_swarm_update(cluster, rotate=False) is None
    assert (cluster.unlock_keys.current, cluster.unlock_keys.previous) == ("", second)


def test_a_manager_reseals_to_whatever_the_cluster_says(tmp_path):
    files = _files(tmp_path)
    cluster = Cluster(id="c")
    cluster.spec.encryption_config.auto_lock_managers = True
    autolock.apply_swarm_update(cluster, rotate=False)
    autolock._reconcile(files, cluster)
    assert files.sealed_with() == keywrap.key_id_of(cluster.unlock_keys.current)

    autolock.apply_swarm_update(cluster, rotate=True)
    autolock._reconcile(files, cluster)
    assert files.sealed_with() == keywrap.key_id_of(cluster.unlock_keys.current)

    cluster.spec.encryption_config.auto_lock_managers = False
    autolock.apply_swarm_update(cluster, rotate=False)
    autolock._reconcile(files, cluster)
    assert files.sealed_with() == "" and files.load_raft_secret() == RAFT_SECRET
