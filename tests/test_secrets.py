"""Secrets: validation, the size limit, API views without data, the dispatcher's filtering and
the worker's tmpfs (the last needs root)."""
import asyncio
import base64
import os
import stat

import pytest

from common import codec, errors
from common.model import (ContainerSpec, Secret, SecretReference, SecretSpec, Service, ServiceSpec,
                          Task, TaskSpec, TaskStatus)
from manager.controlapi import data_objects as api_data_objects
from manager.specs.data_objects import MAX_DATA_SIZE
from manager.dispatcher.dispatcher import Dispatcher
from manager.specs.secrets import SECRETS
from manager.state.store import Transaction
from shoal.cli.data_objects import parse_reference_option
from tests.store_manager import StoreManager, api_client


def add_secret(m, name, data=b"s3cr3t", sid=None):
    s = Secret(id=sid or f"sec-{name}", spec=SecretSpec(name=name, data=data))
    m.commit(Transaction().create("secrets", s))
    return s


def spec_with(*refs, name="web"):
    return ServiceSpec(name=name, task_template=TaskSpec(container=ContainerSpec(
        image="busybox:1", secrets=list(refs))))


# ---- validation -------------------------------------------------------------------------------
def test_refs_resolve_names_and_fill_defaults():
    m = StoreManager()
    s = add_secret(m, "db_pass")
    spec = spec_with(SecretReference(secret_name="db_pass"),
                     SecretReference(secret_name="db_pass", target="other", uid="1000", mode=0o400))
    SECRETS.resolve_refs(m, spec)
    a, b = spec.task_template.container.secrets
    assert (a.secret_id, a.target, a.uid, a.gid, a.mode) == (s.id, "/run/secrets/db_pass", "0", "0", 0o444)
    assert (b.target, b.uid, b.mode) == ("/run/secrets/other", "1000", 0o400)


def test_missing_secret_is_named_with_the_fix():
    m = StoreManager()
    with pytest.raises(errors.NotFound) as exc:
        SECRETS.resolve_refs(m, spec_with(SecretReference(secret_name="x")))
    assert exc.value.message == "secret 'x' not found: create it with 'shoal secret create x FILE'"


@pytest.mark.parametrize("ref, field", [
    (SecretReference(secret_name="a", target="/run/secrets/../etc/passwd"), "target"),
    (SecretReference(secret_name="a", uid="root"), "uid"),
    (SecretReference(secret_name="a", mode=0o1777), "mode"),
    (SecretReference(), "secret_name"),
])
def test_bad_refs_name_the_field(ref, field):
    m = StoreManager()
    add_secret(m, "a")
    with pytest.raises(errors.InvalidArgument) as exc:
        SECRETS.resolve_refs(m, spec_with(ref))
    assert exc.value.field.endswith(field)


def test_duplicate_targets_refused():
    m = StoreManager()
    add_secret(m, "a")
    with pytest.raises(errors.InvalidArgument, match="also the target"):
        SECRETS.resolve_refs(m, spec_with(SecretReference(secret_name="a"),
                                          SecretReference(secret_name="a", target="a")))


def test_names_and_size_limit():
    SECRETS.validate_name("db_pass.v1")
    for bad in ("", "-x", "a/b", "x" * 64, 3):
        with pytest.raises(errors.InvalidArgument):
            SECRETS.validate_name(bad)
    assert SECRETS.decode_data(base64.b64encode(b"x" * MAX_DATA_SIZE).decode()) == b"x" * MAX_DATA_SIZE
    with pytest.raises(errors.InvalidArgument) as exc:
        SECRETS.decode_data(base64.b64encode(b"x" * (MAX_DATA_SIZE + 1)).decode())
    assert f"{MAX_DATA_SIZE + 1} bytes" in exc.value.message and "500 KB" in exc.value.message
    with pytest.raises(errors.InvalidArgument, match="base64"):
        SECRETS.decode_data("not base64!")


def test_cli_secret_option():
    assert parse_reference_option("secret", "db") == {"secret_name": "db"}
    assert parse_reference_option(
        "secret", "source=db,target=/etc/db.pw,uid=10,gid=20,mode=0400") == {
        "secret_name": "db", "target": "/etc/db.pw", "uid": "10", "gid": "20", "mode": 0o400}
    import click
    for bad in ("target=/x", "source=db,colour=red", "source=db,mode=9z", "source=db,uid=root"):
        with pytest.raises(click.BadParameter):
            parse_reference_option("secret", bad)


# ---- API ----------------------------------------------------------------------------------------
def test_api_never_returns_data_and_refuses_removal_in_use():
    async def go():
        m = StoreManager()
        client = await api_client(m, api_data_objects.routes())
        try:
            value = b"TOPSECRET-VALUE-123"
            r = await client.post("/secrets/create", json={
                "name": "pw", "labels": {"a": "b"}, "data": base64.b64encode(value).decode()})
            assert r.status == 201
            sid = (await r.json())["id"]
            r = await client.post("/secrets/create", json={
                "name": "pw", "data": base64.b64encode(b"x").decode()})
            assert r.status == 409
            r = await client.post("/secrets/create", json={
                "name": "big", "data": base64.b64encode(b"x" * (MAX_DATA_SIZE + 1)).decode()})
            assert r.status == 400 and "500 KB" in (await r.json())["message"]
            r = await client.post("/secrets/create", json={"name": "bad/name", "data": "eA=="})
            assert r.status == 400
            for path in ("/secrets", f"/secrets/{sid}", "/secrets/pw"):
                r = await client.get(path)
                text = await r.text()
                assert r.status == 200 and "TOPSECRET" not in text
                assert base64.b64encode(value).decode() not in text and '"data"' not in text
            info = await (await client.get("/secrets/pw")).json()
            assert info["spec"] == {"name": "pw", "labels": {"a": "b"}}
            svc = Service(id="svc1", spec=spec_with(SecretReference(secret_id=sid, secret_name="pw")))
            m.commit(Transaction().create("services", svc))
            r = await client.delete("/secrets/pw")
            assert r.status == 412 and "web" in (await r.json())["message"]
            m.commit(Transaction().delete("services", "svc1"))
            assert (await client.delete("/secrets/pw")).status == 200
            assert (await client.get("/secrets/pw")).status == 404
        finally:
            await client.close()
    asyncio.run(go())


# ---- delivery ---------------------------------------------------------------------------------
def _task(tid, node, refs, state="running", desired="running"):
    return Task(id=tid, node_id=node, service_id="svc", service_name="web", slot=1,
                spec=TaskSpec(container=ContainerSpec(image="busybox:1", secrets=refs)),
                desired_state=desired, status=TaskStatus(state=state))


def test_assignments_carry_only_the_secrets_of_live_tasks_on_that_node():
    m = StoreManager()
    a = add_secret(m, "a", b"AAA")
    b = add_secret(m, "b", b"BBB")
    c = add_secret(m, "c", b"CCC")
    ref = lambda s: [SecretReference(secret_id=s.id, secret_name=s.spec.name, target=f"/run/secrets/{s.spec.name}")]
    m.commit(Transaction()
             .create("tasks", _task("t1", "n1", ref(a)))
             .create("tasks", _task("t2", "n1", ref(b), state="failed"))
             .create("tasks", _task("t3", "n1", ref(c), state="running", desired="shutdown"))
             .create("tasks", _task("t4", "n2", ref(b))))
    d = Dispatcher(m, m)
    n1 = d._assignment_delta("n1", 0)
    assert {t["id"] for t in n1["tasks"]} == {"t1", "t2", "t3"}
    assert n1["secrets"] == [{"id": a.id, "name": "a", "data": base64.b64encode(b"AAA").decode()}]
    n2 = d._assignment_delta("n2", 0)
    assert [s["name"] for s in n2["secrets"]] == ["b"]
    assert d._assignment_delta("n3", 0)["secrets"] == []
    # A delta carries the secrets of the tasks in it only.
    since = m.store.index
    t = codec.clone(m.store.get("tasks", "t4"))
    t.status.state = "running"
    m.commit(Transaction().update("tasks", t))
    # What the dispatcher's watch would have noted by now (no loop runs in this test): an
    # answer goes up to the noted changes.
    d._noted_index = m.store.index
    assert d._assignment_delta("n1", since)["secrets"] == []
    assert [s["name"] for s in d._assignment_delta("n2", since)["secrets"]] == ["b"]
    assert SECRETS.for_tasks(m.store, []) == []


# ---- worker tmpfs (root) ----------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_worker_tmpfs_files_and_cleanup(tmp_path):
    from worker.secrets import SecretCache, SecretMounts
    mounts = SecretMounts(tmp_path / "data", run_root=tmp_path / "run")
    cache = SecretCache()
    cache.update([{"id": "s1", "name": "pw", "data": base64.b64encode(b"hunter2").decode()}], full=True)
    assert "hunter2" not in repr(cache)
    task = _task("task1", "n1", [SecretReference(secret_id="s1", secret_name="pw", target="/run/secrets/pw",
                                                 uid="1000", gid="1001", mode=0o400)])
    binds = mounts.prepare(task, cache)
    assert len(binds) == 1
    host, target, ro = binds[0]
    assert target == "/run/secrets/pw" and ro is True
    st = os.stat(host)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o400)
    assert open(host, "rb").read() == b"hunter2"
    d = tmp_path / "run" / "task1"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    with open("/proc/self/mounts") as f:
        assert any(line.split()[1] == str(d) and line.split()[2] == "tmpfs" for line in f)
    mounts.cleanup("task1")
    assert not d.exists()
    with open("/proc/self/mounts") as f:
        assert not any(line.split()[1] == str(d) for line in f)
    mounts.cleanup("task1")  # idempotent
    # A secret this node was not given: the task cannot start, and nothing is left mounted.
    task2 = _task("task2", "n1", [SecretReference(secret_id="nope", secret_name="nope")])
    with pytest.raises(errors.FailedPrecondition, match="nope"):
        mounts.prepare(task2, cache)
    assert not (tmp_path / "run" / "task2").exists()
    cache.retain(set())
    assert cache.get("s1") is None


def test_previous_spec_counts_as_use():
    m = StoreManager()
    s = add_secret(m, "old")
    svc = Service(id="svc1", spec=spec_with(), previous_spec=spec_with(
        SecretReference(secret_id=s.id, secret_name="old")))
    m.commit(Transaction().create("services", svc))
    assert SECRETS.services_using(m.store, s.id) == ["web"]
