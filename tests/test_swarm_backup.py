"""`shoal swarm backup` / `restore`: the file format (hostile input included), the backup taken
from a real one-member raft manager, and restore's refusals."""
import asyncio
import base64
import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import backupfile, errors
from common.keywrap import UnlockKey
from common.model import Cluster, Node, Secret, SecretSpec
from common.nodestate import NodeFiles, NodeState
from manager.state.store import Store, Transaction

SECRET_BYTES = b"hunter2-the-secret-VALUE-0123456789"
PASSPHRASE = "correct horse battery staple"


def _contents(store_bytes: bytes = b"") -> backupfile.BackupContents:
    if not store_bytes:
        store = Store()
        store.apply(Transaction().create("clusters", Cluster(id="c1")).create(
            "secrets", Secret(id="s1", spec=SecretSpec(name="db", data=SECRET_BYTES))).encode())
        store_bytes = store.snapshot()
    return backupfile.BackupContents(cluster_id="c1", node_id="m1", raft_index=42, raft_term=3,
                                     store_index=7, raft_secret=b"R" * 32, store=store_bytes,
                                     created_at=time.time())


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return backupfile.seal_with_passphrase(_contents(), PASSPHRASE)


@pytest.fixture(scope="module")
def unlock_key() -> UnlockKey:
    return UnlockKey.generate()


@pytest.fixture(scope="module")
def sealed_by_key(unlock_key) -> bytes:
    return backupfile.seal_with_unlock_key(_contents(), unlock_key)


# ---- the format ---------------------------------------------------------------------------------
def test_passphrase_round_trip_and_no_plaintext(sealed):
    back = backupfile.open_backup(sealed, PASSPHRASE)
    assert back == backupfile.open_backup(sealed, PASSPHRASE)
    assert (back.cluster_id, back.node_id, back.raft_index, back.store_index) == ("c1", "m1", 42, 7)
    assert back.raft_secret == b"R" * 32
    store = Store()
    store.restore(back.store)
    assert store.get("secrets", "s1").spec.data == SECRET_BYTES
    # Nothing secret in the clear, in any encoding a careless writer might have used.
    for needle in (SECRET_BYTES, base64.b64encode(SECRET_BYTES), b"R" * 32,
                   base64.b64encode(b"R" * 32), PASSPHRASE.encode()):
        assert needle not in sealed
    header = backupfile.read_header(sealed)
    assert (header.kdf, header.cluster_id, header.store_index) == ("scrypt", "c1", 7)


def test_unlock_key_round_trip(sealed_by_key, unlock_key):
    assert SECRET_BYTES not in sealed_by_key
    assert backupfile.read_header(sealed_by_key).key_id == unlock_key.key_id
    assert backupfile.open_backup(sealed_by_key, str(unlock_key)).store_index == 7


def test_wrong_passphrase_and_wrong_key_are_refused_clearly(sealed, sealed_by_key):
    with pytest.raises(backupfile.WrongBackupKey, match="passphrase is wrong"):
        backupfile.open_backup(sealed, PASSPHRASE + "!")
    with pytest.raises(backupfile.WrongBackupKey, match="unlock key whose id"):
        backupfile.open_backup(sealed_by_key, str(UnlockKey.generate()))
    with pytest.raises(errors.InvalidArgument, match="--passphrase-stdin"):
        backupfile.open_backup(sealed, "")
    with pytest.raises(errors.InvalidArgument, match="unlock key"):
        backupfile.open_backup(sealed_by_key, "")


def test_a_short_passphrase_is_refused_before_any_work():
    with pytest.raises(errors.InvalidArgument, match="at least 8"):
        backupfile.seal_with_passphrase(_contents(), "short")


def test_an_altered_header_fails_authentication(sealed_by_key, unlock_key):
    prefix = struct.Struct(">8sHI")
    _, _, n = prefix.unpack_from(sealed_by_key)
    head = json.loads(sealed_by_key[prefix.size:prefix.size + n])
    head["store_index"] = 8  # a plausible lie: still well-formed, no longer authentic
    new = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    forged = prefix.pack(b"SHOALBKP", 1, len(new)) + new + sealed_by_key[prefix.size + n:]
    with pytest.raises(backupfile.BackupFileError, match="altered"):
        backupfile.open_backup(forged, str(unlock_key))


_SAFE = (backupfile.BackupFileError, backupfile.WrongBackupKey, errors.InvalidArgument)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_cleanly(blob):
    with pytest.raises(backupfile.BackupFileError):
        backupfile.read_header(blob)
    with pytest.raises(_SAFE):
        backupfile.open_backup(blob, PASSPHRASE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_backups_are_refused_cleanly(sealed_by_key, unlock_key, data):
    blob = bytearray(sealed_by_key)
    how = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    at = data.draw(st.integers(0, len(blob) - 1))
    if how == "flip":
        blob[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del blob[at:]
    else:
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(_SAFE):
        backupfile.open_backup(bytes(blob), str(unlock_key))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.dictionaries(
    st.sampled_from(["cipher", "kdf", "salt", "nonce", "cluster_id", "raft_index", "store_index",
                     "created_at", "scrypt", "key_id", "extra"]), _json_values, max_size=11),
    base=st.booleans())
def test_hostile_headers_are_refused_by_the_decoder(sealed_by_key, fields, base):
    """Well-framed files whose JSON header is anything: only BackupFileError, and never a KDF
    run with costs the decoder did not bound."""
    prefix = struct.Struct(">8sHI")
    _, _, n = prefix.unpack_from(sealed_by_key)
    head = json.loads(sealed_by_key[prefix.size:prefix.size + n]) if base else {}
    head.update(fields)
    if fields.get("kdf") is None:
        head["kdf"] = "scrypt"
        head["scrypt"] = fields.get("scrypt", {"n": 1 << 30, "r": 64, "p": 64})
    raw = json.dumps(head).encode()[:backupfile.MAX_HEADER]
    blob = prefix.pack(b"SHOALBKP", 1, len(raw)) + raw + b"\0" * 32
    t0 = time.monotonic()
    with pytest.raises(_SAFE):
        backupfile.open_backup(blob, PASSPHRASE)
    assert time.monotonic() - t0 < 5


def test_header_limits():
    with pytest.raises(backupfile.BackupFileError, match="signature"):
        backupfile.read_header(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(backupfile.BackupFileError, match="version 2"):
        backupfile.read_header(b"SHOALBKP" + struct.pack(">HI", 2, 2) + b"{}" + b"\0" * 20)
    with pytest.raises(backupfile.BackupFileError, match="out of bounds"):
        backupfile.read_header(b"SHOALBKP" + struct.pack(">HI", 1, 1 << 20) + b"{}")


# ---- the backup taken from a running manager ------------------------------------------------------
def _port_free(addr: str) -> bool:
    s = socket.socket()
    try:
        s.bind((addr, 2378))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _manager_scenario(tmp_path: Path, scenario, *, autolock: bool = False):
    from manager.manager import Manager
    addr = "127.0.0.95"
    assert _port_free(addr)

    async def main():
        files = NodeFiles(tmp_path / "node")
        files.prepare()
        files.save_raft_secret(b"S" * 32)
        state = NodeState(node_id="m1", cluster_id="c1", role="manager", advertise_addr=addr,
                          listen_addr=f"{addr}:2377")
        m = Manager(files, state)
        await m.start()
        try:
            deadline = time.monotonic() + 10
            while not m.is_leader:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            cluster = Cluster(id="c1")
            if autolock:
                cluster.spec.encryption_config.auto_lock_managers = True
                cluster.unlock_keys.current = str(UnlockKey.generate())
            await m.propose(Transaction().create("clusters", cluster).create("nodes", Node(id="m1")))
            await scenario(m)
        finally:
            await m.stop()
    asyncio.run(main())


def test_backup_of_a_running_manager_holds_every_acknowledged_write(tmp_path):
    from manager.controlapi.backup import take_backup

    async def scenario(m):
        acked = []

        async def writer():
            for i in range(200):
                r = await m.propose(Transaction().create(
                    "secrets", Secret(id=f"s{i}", spec=SecretSpec(name=f"s{i}", data=SECRET_BYTES))))
                acked.append((f"s{i}", r.index))
        task = asyncio.create_task(writer())
        await asyncio.sleep(0.05)
        before = list(acked)
        result = await take_backup(m, PASSPHRASE)
        await task
        assert before, "the writer had acknowledged nothing before the backup"
        contents = backupfile.open_backup(result.blob, PASSPHRASE)
        assert contents.store_index == result.store_index
        store = Store()
        store.restore(contents.store)
        assert store.index == result.store_index
        # Every write acknowledged before the backup started is in it, and one point in time:
        # exactly the writes up to its index.
        for sid, index in before:
            assert store.get("secrets", sid) is not None
        for sid, index in acked:
            assert (store.get("secrets", sid) is not None) == (index <= result.store_index)
        assert SECRET_BYTES not in result.blob
        assert contents.raft_secret == b"S" * 32
    _manager_scenario(tmp_path, scenario)


def test_backup_needs_a_passphrase_without_autolock_and_uses_the_unlock_key_with_it(tmp_path):
    from manager.controlapi.backup import take_backup

    async def plain(m):
        with pytest.raises(errors.FailedPrecondition, match="--passphrase-stdin"):
            await take_backup(m, None)
        with pytest.raises(errors.InvalidArgument, match="at least 8"):
            await take_backup(m, "short")
    _manager_scenario(tmp_path / "a", plain)

    async def locked(m):
        result = await take_backup(m, None)
        assert result.encrypted_with.startswith("unlock key ")
        key = m.cluster().unlock_keys.current
        assert backupfile.open_backup(result.blob, key).cluster_id == "c1"
    _manager_scenario(tmp_path / "b", locked, autolock=True)


# ---- restore's refusals (nothing written) --------------------------------------------------------
class FakeDaemon:
    """Fake: what shoal/recovery.py reads before it refuses (no daemon runs here)."""

    def __init__(self, root: Path, state: NodeState) -> None:
        self.files = NodeFiles(root)
        self.state = state
        self.locked = False
        self.role_lock = asyncio.Lock()
        self.default_advertise_addr = ""
        self.default_listen_addr = "0.0.0.0:2377"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_restore_refuses_a_wrong_passphrase_and_writes_nothing(tmp_path, sealed):
    from shoal import recovery
    daemon = FakeDaemon(tmp_path / "fresh", NodeState())
    with pytest.raises(backupfile.WrongBackupKey, match="passphrase is wrong"):
        asyncio.run(recovery.restore_swarm(daemon, sealed, "not the passphrase", "10.0.0.9", None))
    assert _tree(tmp_path / "fresh") == []
    assert not daemon.state.in_swarm


def test_restore_refuses_a_host_that_is_in_a_swarm(tmp_path, sealed):
    from shoal import recovery
    state = NodeState(node_id="n1", cluster_id="other", role="worker", advertise_addr="10.0.0.9")
    daemon = FakeDaemon(tmp_path / "used", state)
    with pytest.raises(errors.FailedPrecondition, match="swarm leave --force"):
        asyncio.run(recovery.restore_swarm(daemon, sealed, PASSPHRASE, "10.0.0.9", None))
    assert _tree(tmp_path / "used") == []


def test_restore_refuses_garbage_and_a_missing_address(tmp_path, sealed):
    from shoal import recovery
    daemon = FakeDaemon(tmp_path / "fresh", NodeState())
    with pytest.raises(backupfile.BackupFileError, match="signature"):
        asyncio.run(recovery.restore_swarm(daemon, b"not a backup at all", PASSPHRASE,
                                           "10.0.0.9", None))
    with pytest.raises(errors.InvalidArgument, match="--advertise-addr"):
        asyncio.run(recovery.restore_swarm(daemon, sealed, PASSPHRASE, None, None))
    assert _tree(tmp_path / "fresh") == []


def test_cli_writes_the_backup_0600(tmp_path, monkeypatch):
    """`shoal swarm backup -o FILE`, with the daemon's answer stood in for (Cli.call, the one
    method through which the CLI reaches its daemon): the file is 0600 whatever the umask."""
    from click.testing import CliRunner
    from shoal.cli import main
    from shoal.cli.client import Cli
    answer = {"file": base64.b64encode(b"x" * 10).decode(), "size": 10, "store_index": 7,
              "raft_index": 9, "encrypted_with": "passphrase"}
    monkeypatch.setattr(Cli, "call", lambda self, *args, **kwargs: answer)
    old = os.umask(0)
    try:
        res = CliRunner().invoke(main, ["swarm", "backup", "-o", str(tmp_path / "b.bak")])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert "store index 7" in res.output
    assert (tmp_path / "b.bak").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b.bak").read_bytes() == b"x" * 10


# ---- the local endpoints under hostile requests ------------------------------------------------
_json_bodies = st.dictionaries(
    st.sampled_from(["backup", "passphrase", "advertise_addr", "listen_addr", "extra"]),
    _json_values, max_size=5)


def test_recovery_endpoints_refuse_hostile_requests_cleanly(tmp_path, sealed):
    """No 5xx and nothing written, whatever the body, on a node outside any swarm."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from common.httpserver import CTX, error_middleware
    from shoal import recoveryapi

    daemon = FakeDaemon(tmp_path / "node", NodeState())
    good = base64.b64encode(sealed).decode()

    async def start() -> TestClient:
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = daemon
        app.add_routes(recoveryapi.routes())
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(start())
    try:
        @settings(max_examples=150, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(["/swarm/restore", "/swarm/backup", "/swarm/force-new-cluster"]),
               _json_bodies, st.booleans(), st.binary(max_size=64))
        def one(path, body, with_good_file, raw):
            if with_good_file and path == "/swarm/restore":
                body = {**body, "backup": good}
            data = json.dumps(body).encode() if body or not raw else raw

            async def send():
                r = await client.post(path, data=data, headers={"Content-Type": "application/json"})
                return r.status, json.loads(await r.read())
            status, answer = loop.run_until_complete(send())
            # 503 not_in_swarm is a valid end: the request passed its checks on a node that
            # is in no swarm (backup, force-new-cluster), as the fuzz of the node API has it.
            assert status < 500 or answer.get("code") == "not_in_swarm", (path, body, answer)
            assert answer.get("message") and "Error" not in answer["message"], answer
        one()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    assert _tree(tmp_path / "node") == []


def test_only_a_manager_may_tell_a_node_its_managers(tmp_path):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from common.httpserver import CTX, error_middleware
    from shoal import recoveryapi
    from common import pki
    from manager.controlapi.context import IDENTITY

    daemon = FakeDaemon(tmp_path / "node", NodeState(node_id="w1", cluster_id="c1", role="worker",
                                                     advertise_addr="10.0.0.5",
                                                     managers=["10.0.0.1:2377"]))
    daemon.files.prepare()
    daemon.agent = None
    role = {"value": pki.ROLE_WORKER}

    @web.middleware
    async def as_caller(request, handler):  # stands in for auth_middleware's certificate check
        request[IDENTITY] = pki.NodeIdentity("m9", role["value"], "c1", None, None)
        return await handler(request)

    async def go():
        app = web.Application(middlewares=[error_middleware, as_caller])
        app[CTX] = daemon
        app.add_routes(recoveryapi.cluster_routes())
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/recovery/managers", json={"managers": ["10.0.0.9:2377"]})
            assert r.status == 403
            role["value"] = pki.ROLE_MANAGER
            for bad in ([], ["nope"], ["10.0.0.9"], ["10.0.0.9:0"], [7], ["1.2.3.4:1"] * 17):
                r = await client.post("/recovery/managers", json={"managers": bad})
                assert r.status == 400, bad
            assert daemon.state.managers == ["10.0.0.1:2377"]
            r = await client.post("/recovery/managers", json={"managers": ["10.0.0.9:2377"]})
            assert r.status == 200
        assert daemon.state.managers == ["10.0.0.9:2377"]
        assert daemon.files.load_state().managers == ["10.0.0.9:2377"]
    asyncio.run(go())
