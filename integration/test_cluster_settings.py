"""The swarm settings Docker's `swarm init` and `swarm update` take, on real shoald processes:
the overlays' VXLAN port (--data-path-port), the pools overlay subnets come from
(--default-addr-pool, --default-addr-pool-mask-length), the task history limit, and the raft
snapshot interval and retention (--snapshot-interval, --max-snapshots)."""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab]

PORT = 4790
POOL = "10.123.0.0/16"
IMAGE = "busybox:1"


@pytest.fixture(scope="module")
def lab():
    d = Path(tempfile.mkdtemp(prefix="shoal-img-"))
    lab = Lab(unique_lab_name("set"))
    try:
        layout = imagebuild.build_busybox_oci_layout(d / "busybox", tag="1")
        lab.up(managers=1, workers=1, form=False)
        hosts = {h.name: h for h in lab.hosts()}
        addr = hosts["manager1"].address
        lab.cli("manager1", "swarm", "init", "--advertise-addr", addr,
                "--data-path-port", str(PORT), "--default-addr-pool", POOL,
                "--default-addr-pool-mask-length", "26", "--task-history-limit", "1",
                "--snapshot-interval", "40", "--max-snapshots", "2",
                "--dispatcher-heartbeat", "1s", timeout=60)
        token = lab.cli("manager1", "swarm", "join-token", "-q", "worker").stdout.strip()
        lab.cli("worker1", "swarm", "join", "--token", token, f"{addr}:2377",
                "--advertise-addr", hosts["worker1"].address, timeout=90)
        for h in hosts:
            lab.cli(h, "image", "import", str(layout), IMAGE, timeout=120)
        yield lab
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def _inspect(lab) -> dict:
    return lab.cli_json("manager1", "swarm", "inspect")


def test_init_settings_are_the_swarms(lab):
    sw = _inspect(lab)
    assert sw["data_path_port"] == PORT
    assert sw["spec"]["networking"] == {"default_addr_pools": [POOL], "subnet_size": 26}
    assert sw["spec"]["orchestration"]["task_history_retention_limit"] == 1
    assert sw["spec"]["raft"]["snapshot_interval"] == 40
    assert sw["spec"]["raft"]["keep_old_snapshots"] == 2
    pretty = lab.cli("manager1", "swarm", "inspect", "--format", "pretty").stdout
    assert f"Data Path Port: {PORT}" in pretty and "Raft Snapshot Interval: 40" in pretty


def test_overlays_use_the_pool_and_the_data_path_port(lab):
    lab.cli("manager1", "network", "create", "appnet")
    net = next(n for n in lab.cli_json("manager1", "network", "ls") if n["spec"]["name"] == "appnet")
    subnet = ipaddress.ip_network(net["subnet"])
    assert subnet.subnet_of(ipaddress.ip_network(POOL)) and subnet.prefixlen == 26, net
    lab.cli("manager1", "service", "create", "-d", "--name", "pinger", "--mode", "global",
            "--network", "appnet", IMAGE, "sleep", "100000", timeout=60)

    def both_running():
        tasks = [t for t in lab.cli_json("manager1", "service", "ps", "pinger")
                 if t["status"]["state"] == "running" and t["desired_state"] == "running"]
        return tasks if len(tasks) == 2 else None
    tasks = wait_until(both_running, timeout=60, what="a pinger task on each node")
    by_host = {t["node_hostname"]: t for t in tasks}
    addr = next(a["address"].split("/")[0] for a in by_host["worker1"]["networks"]
                if a["network_id"] == net["id"])
    assert ipaddress.ip_address(addr) in subnet
    # the tunnel between the two nodes carries the traffic, on the swarm's port
    ping = lab.cli("manager1", "container", "exec", by_host["manager1"]["id"], "--",
                   "ping", "-c", "2", "-W", "2", addr, check=False, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    data_root = next(h.data_root for h in lab.hosts() if h.name == "manager1")
    netns = [p for p in (Path(data_root) / "netns").iterdir() if "-ov" in p.name]
    assert netns
    links = subprocess.run(["nsenter", f"--net={netns[0]}", "ip", "-d", "-j", "link", "show",
                            "vxlan0"], capture_output=True, text=True, check=True).stdout
    assert json.loads(links)[0]["linkinfo"]["info_data"]["port"] == PORT
    # and that port is the cluster's: publishing it is refused
    res = lab.cli("manager1", "service", "create", "-d", "--name", "clash", "-p",
                  f"{PORT}:80/udp", IMAGE, "sleep", "1000", check=False)
    assert res.returncode != 0 and "VXLAN" in res.stderr, res.stderr


def test_update_changes_history_and_snapshot_settings_and_refuses_bad_values(lab):
    lab.cli("manager1", "swarm", "update", "--task-history-limit", "3", "--snapshot-interval",
            "25", "--max-snapshots", "1")
    spec = _inspect(lab)["spec"]
    assert spec["orchestration"]["task_history_retention_limit"] == 3
    assert spec["raft"] == {**spec["raft"], "snapshot_interval": 25, "keep_old_snapshots": 1}
    bad = lab.cli("manager1", "swarm", "update", "--max-snapshots", "1000", check=False)
    assert bad.returncode != 0 and "keep_old_snapshots" in bad.stderr, bad.stderr
    bad = lab.cli("manager1", "swarm", "update", "--snapshot-interval", "0", check=False)
    assert bad.returncode != 0 and "--snapshot-interval" in bad.stderr, bad.stderr
    assert _inspect(lab)["spec"]["raft"]["snapshot_interval"] == 25


def test_snapshot_interval_compacts_the_log(lab):
    raft_dir = Path(next(h.data_root for h in lab.hosts() if h.name == "manager1")) / "raft"
    before = (raft_dir / "snapshot").stat().st_mtime_ns if (raft_dir / "snapshot").exists() else 0
    for i in range(60):
        lab.exec("manager1", ["shoal", "config", "create", f"c{i}", "-"], input=f"v{i}",
                 check=True)
    wait_until(lambda: (raft_dir / "snapshot").exists()
               and (raft_dir / "snapshot").stat().st_mtime_ns > before,
               timeout=30, what="a raft snapshot after 60 writes with --snapshot-interval 25")
    # --max-snapshots 1 (the update test): the snapshot before the current one is kept
    for i in range(60, 90):
        lab.exec("manager1", ["shoal", "config", "create", f"c{i}", "-"], input=f"v{i}",
                 check=True)
    olds = wait_until(lambda: list(raft_dir.glob("snapshot.old-*")), timeout=30,
                      what="an old snapshot kept with --max-snapshots 1")
    assert len(olds) == 1, olds


def test_data_path_port_out_of_range_is_refused_at_init():
    lab = Lab(unique_lab_name("dpp"))
    try:
        lab.up(managers=1, workers=0, form=False)
        addr = lab.hosts()[0].address
        res = lab.cli("manager1", "swarm", "init", "--advertise-addr", addr,
                      "--data-path-port", "80", check=False)
        assert res.returncode != 0 and "data_path_port" in res.stderr and "1024" in res.stderr
        # nothing half-made: a good init works right after
        lab.cli("manager1", "swarm", "init", "--advertise-addr", addr, timeout=60)
        assert lab.cli_json("manager1", "swarm", "inspect")["data_path_port"] == 4789
    finally:
        lab.down()
