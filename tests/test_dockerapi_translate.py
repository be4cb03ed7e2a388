"""shoal's objects as Docker's JSON (shoal/dockerapi/translate): the spellings clients parse."""
from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.model import (Cluster, ConfigReference, DNSConfig, HealthConfig,
                          LogDriver, ManagerStatus, Mount, Node, PortConfig, SecretReference,
                          Service, ServiceMode, ServiceSpec, Task, TaskStatus, TmpfsOptions,
                          Ulimit, UpdateStatus, VolumeOptions)
from shoal.dockerapi.translate import nodes, services, swarm, tasks
from shoal.dockerapi.translate.values import ZERO_TIME, nanos, rfc3339


def test_times_are_rfc3339_with_nanoseconds_and_go_zero_time():
    assert rfc3339(0) == ZERO_TIME == "0001-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000.5) == "2023-11-14T22:13:20.500000000Z"
    assert rfc3339(1_700_000_000) == "2023-11-14T22:13:20.000000000Z"


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.floats(min_value=1e-3, max_value=4e9, allow_nan=False))
def test_times_parse_back_to_the_same_instant(ts):
    text = rfc3339(ts)
    whole, frac = text[:-1].split(".")
    assert len(frac) == 9
    back = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp() + int(frac) / 1e9
    assert abs(back - ts) < 1e-6


def test_durations_are_integer_nanoseconds():
    assert nanos(5.0) == 5_000_000_000 and isinstance(nanos(5.0), int)
    assert nanos(0.1) == 100_000_000
    assert nanos(90 * 86400.0) == 7_776_000_000_000_000


@pytest.mark.parametrize("mode,expected", [
    (ServiceMode(replicas=3), {"Replicated": {"Replicas": 3}}),
    (ServiceMode(replicas=0), {"Replicated": {"Replicas": 0}}),
    (ServiceMode(mode="global"), {"Global": {}}),
    (ServiceMode(mode="global-job"), {"GlobalJob": {}}),
    (ServiceMode(mode="replicated-job", replicas=4),
     {"ReplicatedJob": {"MaxConcurrent": 4, "TotalCompletions": 4}}),
    (ServiceMode(mode="replicated-job", replicas=1, max_concurrent=2, total_completions=10),
     {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 10}}),
])
def test_mode_is_a_one_of_object(mode, expected):
    assert services.mode(mode) == expected


def _service() -> Service:
    spec = ServiceSpec(name="web", labels={"a": "b"}, mode=ServiceMode(replicas=2))
    c = spec.task_template.container
    c.image, c.command, c.args = "busybox:1.36", ["sh", "-c"], ["sleep 5"]
    c.env, c.dir, c.user, c.hostname = ["A=1"], "/w", "1000:1000", "h"
    c.mounts = [Mount(type="volume", source="data", target="/data", read_only=True,
                      volume_options=VolumeOptions(labels={"l": "v"}, driver_opts={"o": "x"})),
                Mount(type="tmpfs", target="/t", tmpfs_options=TmpfsOptions(size_bytes=1024))]
    c.secrets = [SecretReference(secret_id="s1", secret_name="db", target="db", mode=0o400)]
    c.configs = [ConfigReference(config_id="c1", config_name="cfg", target="/cfg")]
    c.stop_grace_period = 2.5
    c.healthcheck = HealthConfig(test=["CMD", "true"], interval=1.0, retries=3)
    c.tty, c.init, c.read_only = True, True, True
    c.cap_add, c.sysctls = ["CAP_NET_ADMIN"], {"net.core.somaxconn": "1024"}
    c.ulimits = [Ulimit(name="nofile", soft=1024, hard=2048)]
    c.dns_config = DNSConfig(nameservers=["10.0.0.2"])
    t = spec.task_template
    t.resources.limits.memory_bytes, t.resources.limits.nano_cpus = 64 << 20, 500_000_000
    t.resources.pids_limit = 100
    t.restart_policy.condition, t.restart_policy.delay = "on-failure", 5.0
    t.placement.constraints, t.placement.preferences = ["node.role==worker"], \
        ["spread=node.labels.zone"]
    t.placement.max_replicas = 2
    t.log_driver = LogDriver(name="json-file", options={"max-size": "10m"})
    spec.endpoint_spec.ports = [PortConfig(target_port=80, published_port=8080)]
    spec.update_config.delay = 10.0
    svc = Service(id="s", spec=spec)
    svc.meta.version, svc.meta.created_at = 42, 1_700_000_000.0
    svc.update_status = UpdateStatus(state="completed", message="done", started_at=1.0,
                                     completed_at=2.0)
    return svc


def test_service_spec_in_dockers_spelling():
    out = services.service(_service())
    assert out["ID"] == "s" and out["Version"] == {"Index": 42}
    assert out["CreatedAt"] == "2023-11-14T22:13:20.000000000Z"
    spec = out["Spec"]
    c = spec["TaskTemplate"]["ContainerSpec"]
    assert (c["Image"], c["Command"], c["Args"], c["Env"], c["Dir"], c["User"]) == \
        ("busybox:1.36", ["sh", "-c"], ["sleep 5"], ["A=1"], "/w", "1000:1000")
    assert c["StopGracePeriod"] == 2_500_000_000
    assert c["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 1_000_000_000, "Retries": 3}
    assert (c["TTY"], c["Init"], c["ReadOnly"]) == (True, True, True)
    assert c["Mounts"][0] == {"Type": "volume", "Source": "data", "Target": "/data",
                              "ReadOnly": True,
                              "VolumeOptions": {"Labels": {"l": "v"}, "DriverConfig":
                                                {"Name": "local", "Options": {"o": "x"}}}}
    assert c["Mounts"][1]["TmpfsOptions"] == {"SizeBytes": 1024}
    assert c["Secrets"] == [{"File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 0o400},
                             "SecretID": "s1", "SecretName": "db"}]
    assert c["Configs"][0]["ConfigName"] == "cfg"
    assert c["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert c["CapabilityAdd"] == ["CAP_NET_ADMIN"]
    assert c["DNSConfig"] == {"Nameservers": ["10.0.0.2"]}
    t = spec["TaskTemplate"]
    assert t["Resources"] == {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20,
                                         "Pids": 100}}
    assert t["RestartPolicy"]["Delay"] == 5_000_000_000
    assert t["Placement"] == {"Constraints": ["node.role==worker"],
                              "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
                              "MaxReplicas": 2}
    assert t["LogDriver"] == {"Name": "json-file", "Options": {"max-size": "10m"}}
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    assert spec["UpdateConfig"]["Delay"] == 10_000_000_000
    assert spec["UpdateConfig"]["Monitor"] == 5_000_000_000
    assert spec["EndpointSpec"] == {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}]}
    assert out["UpdateStatus"]["State"] == "completed"
    assert out["UpdateStatus"]["CompletedAt"] == "1970-01-01T00:00:02.000000000Z"
    assert "ServiceStatus" not in out and "PreviousSpec" not in out
    json.dumps(out)  # plain JSON all the way down


def test_service_status_and_previous_spec():
    svc = _service()
    svc.previous_spec = ServiceSpec(name="web")
    out = services.service(svc, {"running": 1, "desired": 2, "completed": 0})
    assert out["ServiceStatus"] == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0}
    assert out["PreviousSpec"]["Name"] == "web"


def test_a_never_updated_service_has_no_update_status():
    assert "UpdateStatus" not in services.service(Service(id="x"))


def test_container_spec_is_never_absent():
    # The docker CLI dereferences Spec.ContainerSpec of every task without a check.
    assert "ContainerSpec" in services.task_spec(Service(id="x").spec.task_template)


def test_node_manager_status_and_leader():
    n = Node(id="n1", role="manager",
             manager_status=ManagerStatus(raft_addr="10.0.0.1:2378", api_addr="10.0.0.1:2377"))
    n.spec.desired_role = "manager"
    out = nodes.node(n, {"10.0.0.1:2378": "leader"})
    assert out["ManagerStatus"] == {"Leader": True, "Reachability": "reachable",
                                    "Addr": "10.0.0.1:2377"}
    assert nodes.node(n, {})["ManagerStatus"]["Reachability"] == "unreachable"
    assert out["Spec"]["Role"] == "manager" and out["Status"] == {"State": "unknown"}
    w = Node(id="n2")
    assert "ManagerStatus" not in nodes.node(w, {})


def test_task_status_container_and_host_ports():
    t = Task(id="t", service_id="s", slot=3, node_id="n",
             status=TaskStatus(state="running", timestamp=1.0, container_id="abc", exit_code=None),
             ports=[PortConfig(target_port=80, published_port=8080, publish_mode="host"),
                    PortConfig(target_port=81, published_port=8081)])
    out = tasks.task(t, lambda _: None)
    assert out["Status"]["ContainerStatus"] == {"ContainerID": "abc"}
    assert out["Status"]["PortStatus"] == {"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}
    assert out["Status"]["Timestamp"] == "1970-01-01T00:00:01.000000000Z"
    assert (out["Slot"], out["NodeID"], out["DesiredState"]) == (3, "n", "running")
    assert out["Spec"]["ContainerSpec"]["Isolation"] == "default"


def test_cluster_never_carries_keys_and_info_has_no_tokens():
    c = Cluster(id="c")
    c.root_ca.key_pem, c.unlock_keys.current = b"KEY", "SHLKEY-1-x"
    c.join_tokens.worker = "SHLTKN-1-w"
    info = json.dumps(swarm.cluster_info(c))
    assert "KEY" not in info and "SHLKEY" not in info and "SHLTKN" not in info
    full = swarm.swarm(c)
    assert full["JoinTokens"]["Worker"] == "SHLTKN-1-w"
    assert "KEY" not in json.dumps(full) and "SHLKEY" not in json.dumps(full)
    assert full["Spec"]["CAConfig"]["NodeCertExpiry"] == 7_776_000_000_000_000
    assert full["DefaultAddrPool"] == ["10.0.0.0/8"] and full["SubnetSize"] == 24


def test_swarm_settings_docker_spells_round_trip():
    req = swarm.init_request({"DataPathPort": 4790, "DefaultAddrPool": ["10.9.0.0/16"],
                              "SubnetSize": 26,
                              "Spec": {"Raft": {"SnapshotInterval": 50, "KeepOldSnapshots": 2},
                                       "Orchestration": {"TaskHistoryRetentionLimit": 1}}})
    assert req.data_path_port == 4790
    assert req.spec["raft"]["snapshot_interval"] == 50
    assert req.spec["raft"]["keep_old_snapshots"] == 2
    assert req.spec["networking"] == {"default_addr_pools": ["10.9.0.0/16"], "subnet_size": 26}
    assert swarm.init_request({}).data_path_port == 0      # the default, as dockerd reads 0
    c = Cluster(id="c1", data_path_port=4790)
    c.spec.raft.keep_old_snapshots = 2
    info = swarm.cluster_info(c)
    assert info["DataPathPort"] == 4790 and info["Spec"]["Raft"]["KeepOldSnapshots"] == 2
    for port in (80, 1023, 49152, 65535):
        with pytest.raises(Exception, match="DataPathPort"):
            swarm.init_request({"DataPathPort": port})
