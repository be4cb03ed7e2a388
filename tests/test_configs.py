"""Configs: validation, the size limit, API views (with data), removal refused while in use, the
dispatcher's filtering, the CLI option, and the worker folding configs into the secrets tmpfs."""
import asyncio
import base64
import os
import stat

import click
import pytest

from common import codec, errors
from common.model import (Config, ConfigReference, ConfigSpec, ContainerSpec, SecretReference,
                          Service, ServiceSpec, Task, TaskSpec, TaskStatus)
from manager.specs.configs import CONFIGS
from manager.specs.data_objects import MAX_DATA_SIZE
from manager.dispatcher.dispatcher import Dispatcher
from manager.state.store import Transaction
from shoal.cli.data_objects import parse_reference_option
from shoal.cli.service import build_spec
from tests.store_manager import StoreManager, api_client
from worker.taskrunner import with_configs


def add_config(m, name, data=b"key=value\n", cid=None):
    c = Config(id=cid or f"cfg-{name}", spec=ConfigSpec(name=name, data=data))
    m.commit(Transaction().create("configs", c))
    return c


def spec_with(*refs, secrets=(), name="web"):
    return ServiceSpec(name=name, task_template=TaskSpec(container=ContainerSpec(
        image="busybox:1", configs=list(refs), secrets=list(secrets))))


def test_refs_resolve_names_and_fill_defaults():
    m = StoreManager()
    c = add_config(m, "nginx.conf")
    spec = spec_with(ConfigReference(config_name="nginx.conf"),
                     ConfigReference(config_name="nginx.conf", target="etc/app.conf", uid="1000", mode=0o440))
    CONFIGS.resolve_refs(m, spec)
    a, b = spec.task_template.container.configs
    assert (a.config_id, a.target, a.uid, a.gid, a.mode) == (c.id, "/nginx.conf", "0", "0", 0o444)
    assert (b.target, b.uid, b.mode) == ("/etc/app.conf", "1000", 0o440)


def test_missing_config_is_named_with_the_fix():
    with pytest.raises(errors.NotFound) as exc:
        CONFIGS.resolve_refs(StoreManager(), spec_with(ConfigReference(config_name="x")))
    assert exc.value.message == "config 'x' not found: create it with 'shoal config create x FILE'"


@pytest.mark.parametrize("ref, field", [
    (ConfigReference(config_name="a", target="/etc/../passwd"), "target"),
    (ConfigReference(config_name="a", target="/"), "target"),
    (ConfigReference(config_name="a", uid="root"), "uid"),
    (ConfigReference(config_name="a", mode=0o1777), "mode"),
    (ConfigReference(), "config_name"),
])
def test_bad_refs_name_the_field(ref, field):
    m = StoreManager()
    add_config(m, "a")
    with pytest.raises(errors.InvalidArgument) as exc:
        CONFIGS.resolve_refs(m, spec_with(ref))
    assert exc.value.field.endswith(field)


def test_duplicate_targets_refused_also_against_secrets():
    m = StoreManager()
    add_config(m, "a")
    with pytest.raises(errors.InvalidArgument, match="also the target"):
        CONFIGS.resolve_refs(m, spec_with(ConfigReference(config_name="a"),
                                     ConfigReference(config_name="a", target="/a")))
    with pytest.raises(errors.InvalidArgument, match="target of a secret"):
        CONFIGS.resolve_refs(m, spec_with(ConfigReference(config_name="a", target="/run/secrets/s"),
                                     secrets=[SecretReference(secret_name="s", target="/run/secrets/s")]))


def test_names_and_size_limit():
    CONFIGS.validate_name("app.conf-v1")
    for bad in ("", "-x", "a/b", "x" * 64, 3):
        with pytest.raises(errors.InvalidArgument):
            CONFIGS.validate_name(bad)
    assert CONFIGS.decode_data(base64.b64encode(b"x" * MAX_DATA_SIZE).decode()) == b"x" * MAX_DATA_SIZE
    with pytest.raises(errors.InvalidArgument, match="500 KB"):
        CONFIGS.decode_data(base64.b64encode(b"x" * (MAX_DATA_SIZE + 1)).decode())
    with pytest.raises(errors.InvalidArgument, match="base64"):
        CONFIGS.decode_data("not base64!")


def test_cli_config_option_and_build_spec():
    assert parse_reference_option("config", "app") == {"config_name": "app"}
    assert parse_reference_option(
        "config", "source=app,target=/etc/app.conf,uid=10,gid=20,mode=0440") == {
        "config_name": "app", "target": "/etc/app.conf", "uid": "10", "gid": "20", "mode": 0o440}
    for bad in ("", "target=/x", "source=a,colour=red", "source=a,mode=9z", "source=a,uid=root"):
        with pytest.raises(click.BadParameter) as exc:
            parse_reference_option("config", bad)
        assert "secret" not in exc.value.message
    o = {"env": [], "container_label": [], "mount": [], "label": [], "constraint": [],
         "placement_pref": [], "publish": [], "mode": "replicated", "config": ["app"]}
    assert build_spec("web", "busybox", [], o)["task_template"]["container"]["configs"] == [
        {"config_name": "app"}]


def test_api_shows_data_and_refuses_removal_in_use():
    # Imported here: the control API imported before tests/test_lb.py is collected breaks its
    # pyroute2 use.
    from manager.controlapi import data_objects as api_data_objects

    async def go():
        m = StoreManager()
        client = await api_client(m, api_data_objects.routes())
        try:
            value = b"listen 80;\n"
            r = await client.post("/configs/create", json={
                "name": "nginx", "labels": {"a": "b"}, "data": base64.b64encode(value).decode()})
            assert r.status == 201
            cid = (await r.json())["id"]
            r = await client.post("/configs/create", json={"name": "nginx", "data": "eA=="})
            assert r.status == 409
            r = await client.post("/configs/create", json={
                "name": "big", "data": base64.b64encode(b"x" * (MAX_DATA_SIZE + 1)).decode()})
            assert r.status == 400 and "500 KB" in (await r.json())["message"]
            assert (await client.post("/configs/create", json={"name": "a/b", "data": "eA=="})).status == 400
            rows = await (await client.get("/configs")).json()
            assert [r["spec"]["name"] for r in rows] == ["nginx"]
            info = await (await client.get(f"/configs/{cid}")).json()
            assert info["spec"] == {"name": "nginx", "labels": {"a": "b"},
                                    "data": base64.b64encode(value).decode()}
            svc = Service(id="svc1", spec=spec_with(ConfigReference(config_id=cid, config_name="nginx")))
            m.commit(Transaction().create("services", svc))
            r = await client.delete("/configs/nginx")
            assert r.status == 412 and "web" in (await r.json())["message"]
            m.commit(Transaction().delete("services", "svc1"))
            assert (await client.delete("/configs/nginx")).status == 200
            assert (await client.get("/configs/nginx")).status == 404
        finally:
            await client.close()
    asyncio.run(go())


def test_previous_spec_counts_as_use():
    m = StoreManager()
    c = add_config(m, "old")
    svc = Service(id="svc1", spec=spec_with(), previous_spec=spec_with(
        ConfigReference(config_id=c.id, config_name="old")))
    m.commit(Transaction().create("services", svc))
    assert CONFIGS.services_using(m.store, c.id) == ["web"]


def _task(tid, node, refs, state="running", desired="running"):
    return Task(id=tid, node_id=node, service_id="svc", service_name="web", slot=1,
                spec=TaskSpec(container=ContainerSpec(image="busybox:1", configs=refs)),
                desired_state=desired, status=TaskStatus(state=state))


def test_assignments_carry_only_the_configs_of_live_tasks_on_that_node():
    m = StoreManager()
    a, b, c = add_config(m, "a", b"AAA"), add_config(m, "b", b"BBB"), add_config(m, "c", b"CCC")
    ref = lambda x: [ConfigReference(config_id=x.id, config_name=x.spec.name, target=f"/{x.spec.name}")]
    m.commit(Transaction()
             .create("tasks", _task("t1", "n1", ref(a)))
             .create("tasks", _task("t2", "n1", ref(b), state="failed"))
             .create("tasks", _task("t3", "n1", ref(c), desired="shutdown"))
             .create("tasks", _task("t4", "n2", ref(b))))
    d = Dispatcher(m, m)
    n1 = d._assignment_delta("n1", 0)
    assert n1["configs"] == [{"id": a.id, "name": "a", "data": base64.b64encode(b"AAA").decode()}]
    assert n1["secrets"] == []
    assert [x["name"] for x in d._assignment_delta("n2", 0)["configs"]] == ["b"]
    assert d._assignment_delta("n3", 0)["configs"] == []
    since = m.store.index
    t = codec.clone(m.store.get("tasks", "t4"))
    m.commit(Transaction().update("tasks", t))
    # What the dispatcher's watch would have noted by now (no loop runs in this test): an
    # answer goes up to the noted changes.
    d._noted_index = m.store.index
    assert d._assignment_delta("n1", since)["configs"] == []
    assert [x["name"] for x in d._assignment_delta("n2", since)["configs"]] == ["b"]
    assert CONFIGS.for_tasks(m.store, []) == []


def test_store_keeps_config_names_unique():
    m = StoreManager()
    add_config(m, "a")
    assert not m.store.apply(Transaction().create("configs", Config(
        id="other", spec=ConfigSpec(name="a", data=b"x"))).encode())["ok"]


def test_worker_folds_configs_into_the_secret_refs():
    task = _task("t1", "n1", [ConfigReference(config_id="c1", config_name="app", target="/etc/app.conf",
                                              uid="5", gid="6", mode=0o440)])
    task.spec.container.secrets = [SecretReference(secret_id="s1", secret_name="pw", target="/run/secrets/pw")]
    folded = with_configs(task)
    assert [(r.secret_id, r.target, r.uid, r.gid, r.mode) for r in folded.spec.container.secrets] == [
        ("s1", "/run/secrets/pw", "0", "0", 0o444), ("c1", "/etc/app.conf", "5", "6", 0o440)]
    assert len(task.spec.container.secrets) == 1  # the original is untouched
    plain = _task("t2", "n1", [])
    assert with_configs(plain) is plain


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_worker_mounts_configs_and_cleans_up(tmp_path):
    from worker.secrets import SecretCache, SecretMounts
    mounts = SecretMounts(tmp_path / "data", run_root=tmp_path / "run")
    cache = SecretCache()
    cache.update([{"id": "c1", "name": "app", "data": base64.b64encode(b"a=1\n").decode()}], full=False)
    task = _task("task1", "n1", [ConfigReference(config_id="c1", config_name="app", target="/app")])
    [(host, target, ro)] = mounts.prepare(with_configs(task), cache)
    assert (target, ro) == ("/app", True)
    assert open(host, "rb").read() == b"a=1\n" and stat.S_IMODE(os.stat(host).st_mode) == 0o444
    mounts.cleanup("task1")
    assert not (tmp_path / "run" / "task1").exists()
