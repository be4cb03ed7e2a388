"""The namespace lab machinery, with a fake daemon (root only).

The fake daemon is a tiny HTTP server on the host's unix socket answering GET /_ping, plus a
TCP listener on ADVERTISE:2377, so the tests cover the namespaces, the underlay, fault injection
and the teardown without a real shoald.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

from common import linux  # noqa: E402
from shoal.lab import netlab  # noqa: E402
from shoal.lab.netlab import Lab, LabError  # noqa: E402
from shoal.lab.processes import netns_pids  # noqa: E402
from worker.executor import cgroup_mounts, cgroup_prefix_for  # noqa: E402

FAKE_DAEMON = textwrap.dedent(r'''
    import argparse, http.server, os, socket, socketserver, sys, threading
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--advertise-addr", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--hostname", default="")
    a = p.parse_args()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"OK" if self.path == "/_ping" else b"no"
            self.send_response(200 if self.path == "/_ping" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    class U(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    class T(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    tcp = T((a.advertise_addr, 2377), H)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("fake shoald", a.hostname, os.getpid(), flush=True)
    U(a.socket, H).serve_forever()
''')


@pytest.fixture
def fake_daemon(tmp_path):
    script = tmp_path / "fake_shoald.py"
    script.write_text(FAKE_DAEMON)

    def argv(*, host, address, data_root, socket):
        return [sys.executable, str(script), "--socket", socket, "--advertise-addr", address,
                "--data-root", data_root, "--hostname", host]
    return argv


@pytest.fixture
def make_lab(fake_daemon):
    made = []

    def make(**kwargs) -> Lab:
        name = "t" + secrets.token_hex(3)
        lab = Lab(name, daemon_argv=fake_daemon, **kwargs)
        made.append(lab)
        return lab
    yield make
    for lab in made:
        lab.down()
        assert_gone(lab)


def ns_list() -> list[str]:
    return netlab.list_namespaces()


def assert_gone(lab: Lab, pids=()) -> None:
    assert not [ns for ns in ns_list() if ns.startswith(f"shoal-{lab.name}-")]
    assert not lab.state_dir.exists()
    assert not lab.run_dir.exists()
    for pid in pids:
        assert not linux.pid_alive(pid), f"pid {pid} survived down()"


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True,
                          text=True).stdout


PROBE = ("import socket, sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], 2377), timeout=float(sys.argv[2])).close()\n"
         "except OSError as e:\n"
         "    print(e)\n"
         "    sys.exit(1)\n")


def probe(lab: Lab, src: str, dst_addr: str, wait: float = 1.0):
    """TCP connect from host `src` to the fake daemon's 2377 on `dst_addr` (no `ping` needed)."""
    return lab.exec(src, [sys.executable, "-c", PROBE, dst_addr, str(wait)])


def can_reach(lab: Lab, src: str, dst_addr: str, wait: float = 1.0) -> bool:
    return probe(lab, src, dst_addr, wait).returncode == 0


def test_up_layout_and_connectivity(make_lab):
    lab = make_lab()
    lab.up(managers=2, workers=1, form=False)
    hosts = {h.name: h for h in lab.hosts()}
    assert list(hosts) == ["manager1", "manager2", "worker1"]
    assert hosts["manager1"].address == "172.31.0.11"
    assert hosts["manager2"].address == "172.31.0.12"
    assert hosts["worker1"].address == "172.31.0.101"
    assert all(h.state == "running" and linux.pid_alive(h.pid) for h in hosts.values())
    assert all(netlab.ping(h.socket) for h in hosts.values())
    assert (lab.state_dir / "lab.json").exists()
    assert lab.underlay in ns_list()

    br = json.loads(ip(lab.underlay, "-j", "link", "show", "br0"))[0]
    assert "UP" in br["flags"]
    for h in hosts.values():
        assert h.namespace == f"shoal-{lab.name}-{h.name}" and h.namespace in ns_list()
        eth0 = json.loads(ip(h.namespace, "-j", "-4", "addr", "show", "eth0"))[0]
        assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [(h.address, 24)]
        assert "UP" in eth0["flags"]
        peer = json.loads(ip(lab.underlay, "-j", "link", "show", f"v-{h.name}"))[0]
        assert peer["master"] == "br0" and "UP" in peer["flags"]
        # only the connected /24, no default route, nothing in other tables
        routes = json.loads(ip(h.namespace, "-j", "-4", "route", "show", "table", "main"))
        assert [r["dst"] for r in routes] == ["172.31.0.0/24"]
        assert ip(h.namespace, "-4", "route", "show", "default") == ""
        assert ip(h.namespace, "-6", "route", "show", "default") == ""
        # the daemon really runs inside the host's namespace
        assert h.pid in netns_pids(h.namespace)
        assert (Path(h.data_root) / "shoald.log").read_text().count("fake shoald") == 1

    assert can_reach(lab, "manager1", "172.31.0.101")
    assert can_reach(lab, "worker1", "172.31.0.12")
    assert can_reach(lab, "manager2", "172.31.0.11")
    # nothing beyond the lab: no route out
    res = probe(lab, "manager1", "1.1.1.1")
    assert res.returncode == 1 and "unreachable" in res.stdout
    # the underlay switch has no address at all (not even IPv6 link-local)
    assert ip(lab.underlay, "addr", "show", "br0").count("inet") == 0


def test_exec_env_input_and_errors(make_lab):
    lab = make_lab()
    lab.up(managers=1, workers=0, form=False)
    h = lab.host("manager1")
    res = lab.exec("manager1", ["sh", "-c", "echo $SHOAL_SOCKET; cat; exit 3"], input=b"hi\n")
    assert res.returncode == 3
    assert res.stdout.splitlines() == [h.socket, "hi"]
    with pytest.raises(netlab.LabCommandError, match="exited with 3"):
        lab.exec("manager1", ["sh", "-c", "exit 3"], check=True)
    with pytest.raises(LabError, match="no host 'worker7'.*manager1"):
        lab.exec("worker7", ["true"])
    with pytest.raises(LabError, match="invalid host name"):
        lab.kill("bogus!")
    with pytest.raises(LabError, match="already exists.*shoal lab down --name"):
        Lab(lab.name).up(1, 0, form=False)
    # the failed second `up` must not have torn down the first lab
    assert lab.host("manager1").state == "running"
    # `shoal` maps to this interpreter's CLI module
    full, env = lab.command("manager1", ["shoal", "node", "ls"])
    assert full[-5:] == [sys.executable, "-m", "shoal.cli", "node", "ls"]
    assert env["SHOAL_SOCKET"] == h.socket
    loaded = Lab.load(lab.name)
    assert [x.name for x in loaded.hosts()] == ["manager1"]


def test_fault_injection(make_lab):
    lab = make_lab()
    lab.up(managers=1, workers=2, form=False)
    w1 = lab.host("worker1")

    lab.partition("worker1")
    assert lab.host("worker1").state == "partitioned"
    assert not can_reach(lab, "manager1", w1.address)
    assert can_reach(lab, "manager1", "172.31.0.102")  # the others still talk
    lab.heal("worker1")
    assert lab.host("worker1").state == "running"
    assert can_reach(lab, "manager1", w1.address, wait=3)

    pid = w1.pid
    lab.kill("worker1")
    assert not linux.pid_alive(pid)
    assert lab.host("worker1").state == "killed"
    with pytest.raises(LabError, match="not running.*shoal lab start"):
        lab.kill("worker1")
    lab.start("worker1")
    w1b = lab.host("worker1")
    assert w1b.state == "running" and w1b.pid != pid and netlab.ping(w1b.socket)
    with pytest.raises(LabError, match="already running"):
        lab.start("worker1")

    lab.stop("worker1")
    assert not linux.pid_alive(w1b.pid)
    assert lab.host("worker1").state == "stopped"
    lab.start("worker1")
    assert lab.host("worker1").pid not in (pid, w1b.pid)

    # a daemon that dies on its own shows up as "exited"
    os.kill(lab.host("worker2").pid, 9)
    deadline = time.monotonic() + 5
    while lab.host("worker2").state != "exited" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab.host("worker2").state == "exited"


def test_add_host(make_lab):
    lab = make_lab()
    lab.up(managers=1, workers=1, form=False)
    assert lab.add_host("worker", join=False) == "worker2"
    assert lab.add_host("manager", join=False) == "manager2"
    hosts = {h.name: h for h in lab.hosts()}
    assert hosts["worker2"].address == "172.31.0.102"
    assert hosts["manager2"].address == "172.31.0.12"
    assert can_reach(lab, "worker2", "172.31.0.12")
    with pytest.raises(LabError, match="invalid role"):
        lab.add_host("boss")


def test_down_after_crash(make_lab):
    lab = make_lab()
    lab.up(managers=1, workers=1, form=False)
    pids = [h.pid for h in lab.hosts()]
    # a stray process inside a host namespace, not recorded anywhere
    stray = subprocess.Popen(["ip", "netns", "exec", lab.host("worker1").namespace,
                              "sleep", "300"], start_new_session=True)
    # a container cgroup whose runc state is gone (its daemon killed mid-create)
    leftovers = [Path(mnt) / f"{cgroup_prefix_for(lab.state_dir / 'worker1' / 'executor')}gone"
                 for mnt, _, _ in cgroup_mounts()]
    for cgroup in leftovers:
        cgroup.mkdir()
    (lab.state_dir / "lab.json").unlink()
    with pytest.raises(LabError, match="no state.*shoal lab down"):
        Lab.load(lab.name)
    assert lab.name in netlab.labs()
    Lab(lab.name).down()  # a fresh object: works by scanning namespace names
    stray.wait(timeout=5)
    assert_gone(lab, pids + [stray.pid])
    assert leftovers and not any(c.exists() for c in leftovers)
    assert lab.name not in netlab.labs()
    Lab(lab.name).down()  # idempotent


def test_a_data_root_with_a_tab_a_backslash_and_non_ascii(monkeypatch, make_lab, tmp_path):
    """Issue 14, must-show 5: hosts' data roots under such a path. The network helper (which
    once decoded the mount table's UTF-8 as Latin-1) must release its namespace directory, and
    `down` must find and remove what a killed daemon left mounted there."""
    from worker.network import nsutil
    from worker.network.dns import DnsServer, ServiceTable
    monkeypatch.setattr(netlab, "LAB_ROOT", tmp_path / "tab\there back\\slash é")
    lab = make_lab()
    lab.up(managers=1, workers=0, form=False)
    h = lab.host("manager1")
    data_root = Path(h.data_root)
    assert data_root.is_relative_to(netlab.LAB_ROOT) and netlab.ping(h.socket)
    assert (data_root / "shoald.log").read_text().count("fake shoald") == 1

    # a task's network namespace, made, used and removed as the host's worker does
    # (pyroute2 took a str path for ASCII: a non-ASCII one failed before any of this)
    netns_dir = data_root / "netns"
    task1 = str(netns_dir / "task1")
    nsutil.create(task1)
    assert nsutil.exists(task1) and linux.is_mountpoint(netns_dir)
    with nsutil.ipr(task1) as ip:
        assert [link.get_attr("IFLA_IFNAME") for link in ip.get_links()] == ["lo"]
    devices = nsutil.call_in(task1, lambda: Path("/proc/net/dev").read_text().splitlines()[2:])
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]

    async def dns_in_the_namespace():
        server = DnsServer(ServiceTable(), "127.0.0.1", 0, netns=task1)
        await server.start()
        await server.stop()
    asyncio.run(dns_in_the_namespace())
    nsutil.remove(task1)
    nsutil.release_dir(str(netns_dir))
    assert not linux.is_mountpoint(netns_dir)

    # a daemon killed with a namespace and a container's root file system still mounted
    nsutil.create(str(netns_dir / "task2"))
    rootfs = data_root / "executor" / "containers" / "c1" / "rootfs"
    rootfs.mkdir(parents=True)
    linux.mount("tmpfs", rootfs, "tmpfs", 0, "size=64k")
    lab.kill("manager1")
    lab.down()
    assert not [m for m in linux.mountinfo() if m.mount_point.startswith(str(tmp_path))]
    assert not lab.state_dir.exists()


def test_context_manager_and_failed_up(make_lab, tmp_path):
    with pytest.raises(RuntimeError):
        with make_lab() as lab:
            lab.up(managers=1, workers=0, form=False)
            pid = lab.host("manager1").pid
            raise RuntimeError("boom")
    assert_gone(lab, [pid])

    def broken(*, host, address, data_root, socket):
        return [sys.executable, "-c", "import sys; print('cannot start: bad config'); "
                "sys.exit(4)"]
    bad = Lab("t" + secrets.token_hex(3), daemon_argv=broken)
    with pytest.raises(LabError, match=r"(?s)exited with code 4.*shoald.log.*bad config"):
        bad.up(managers=1, workers=1, form=False)
    assert_gone(bad)


def test_names_and_missing_labs():
    with pytest.raises(LabError, match="invalid lab name"):
        Lab("Bad-Name")
    with pytest.raises(LabError, match="invalid lab name"):
        Lab("waytoolongname")
    with pytest.raises(LabError, match="no lab named 'nolab42'.*shoal lab up --name nolab42"):
        Lab.load("nolab42")
    Lab("nolab42").down()  # nothing there: no error


def test_cli(make_lab):
    # load shoal/cli/lab.py on its own: it needs only click and shoal.lab, not the rest of the CLI
    import importlib.util
    path = Path(netlab.__file__).resolve().parent.parent / "cli" / "lab.py"
    spec = importlib.util.spec_from_file_location("_shoal_cli_lab_under_test", path)
    cli_lab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_lab)
    from click.testing import CliRunner
    runner = CliRunner()
    lab = make_lab()
    lab.up(managers=1, workers=1, form=False)

    res = runner.invoke(cli_lab.lab, ["ls", "--name", lab.name, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [h["name"] for h in json.loads(res.output)] == ["manager1", "worker1"]
    res = runner.invoke(cli_lab.lab, ["ls", "--name", lab.name])
    assert res.exit_code == 0 and res.output.split()[:5] == ["HOST", "ROLE", "ADDRESS",
                                                             "STATE", "PID"]
    res = runner.invoke(cli_lab.lab, ["exec", "--name", lab.name, "worker1", "--",
                                      "sh", "-c", "exit 7"])
    assert res.exit_code == 7
    res = runner.invoke(cli_lab.lab, ["partition", "--name", lab.name, "worker1"])
    assert res.exit_code == 0 and lab.host("worker1").partitioned
    res = runner.invoke(cli_lab.lab, ["kill", "--name", lab.name, "worker9"])
    assert res.exit_code == 1 and "no host 'worker9'" in res.output
    res = runner.invoke(cli_lab.lab, ["ls", "--name", "BAD"])
    assert res.exit_code == 1 and "invalid lab name" in res.output
    res = runner.invoke(cli_lab.lab, ["ls", "--name", "nolab42"])
    assert res.exit_code == 1 and "shoal lab up --name nolab42" in res.output
    res = runner.invoke(cli_lab.lab, ["up", "--name", lab.name])
    assert res.exit_code == 1 and f"shoal lab down --name {lab.name}" in res.output
    res = runner.invoke(cli_lab.lab, ["down", "--name", lab.name])
    assert res.exit_code == 0, res.output
    assert_gone(lab)


class FakeClusterLab(Lab):
    """Answers `shoal ...` commands from an in-memory cluster, to test how the lab forms it."""

    def __init__(self, *args, fail_join: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, tuple]] = []
        self.nodes: dict[str, dict] = {}
        self.fail_join = fail_join

    def exec(self, host, argv, *, check=False, timeout=60, input=None):
        if argv[:1] != ["shoal"]:
            return super().exec(host, argv, check=check, timeout=timeout, input=input)
        args = list(argv[1:])
        self.calls.append((host, tuple(args)))

        def done(out="", code=0, err=""):
            res = subprocess.CompletedProcess(argv, code, out, err)
            if check and code:
                raise netlab.LabCommandError(f"{host}: failed: {err}", res)
            return res
        if args[:2] == ["swarm", "init"]:
            assert args[2:] == ["--advertise-addr", "172.31.0.11"] and host == "manager1"
            self.nodes[host] = {"hostname": host, "status": "ready", "availability": "active",
                                "manager_status": "leader"}
            return done()
        if args[:3] == ["swarm", "join-token", "-q"]:
            return done(f"TOKEN-{args[3]}\n")
        if args[:2] == ["swarm", "join"]:
            if host == self.fail_join:
                return done(code=1, err="join refused")
            token = args[args.index("--token") + 1]
            assert args[args.index("--advertise-addr") + 1] == self.host(host).address
            managers = {h.address for h in self.hosts() if h.role == "manager"}
            assert args[-1].endswith(":2377") and args[-1].split(":")[0] in managers
            # raft membership changes one at a time: every earlier manager is settled
            assert all(n["status"] == "ready" for n in self.nodes.values()
                       if n["manager_status"]), "manager joined while another was pending"
            if token == "TOKEN-worker":  # workers only after all managers
                assert all(h.name in self.nodes for h in self.hosts() if h.role == "manager")
            self.nodes[host] = {"hostname": host, "status": "down", "availability": "active",
                                "manager_status": "unreachable" if "manager" in token else ""}
            return done()
        if args[:2] == ["node", "ls"]:
            assert args[2:] == ["--format", "json"]
            out = json.dumps(list(self.nodes.values()))
            for n in self.nodes.values():  # each poll brings pending nodes to ready
                if n["status"] == "down":
                    n["status"] = "ready"
                    n["manager_status"] = "reachable" if n["manager_status"] else ""
            return done(out)
        raise AssertionError(f"unexpected command {args}")


def test_form_cluster_order(fake_daemon):
    lab = FakeClusterLab("t" + secrets.token_hex(3), daemon_argv=fake_daemon)
    try:
        lab.up(managers=3, workers=2, form=True, timeout=30)
        assert lab.formed and json.loads(lab.json_path.read_text())["state"] == "up"
        joins = [h for h, a in lab.calls if a[:2] == ("swarm", "join")]
        assert joins[:2] == ["manager2", "manager3"] and sorted(joins[2:]) == ["worker1", "worker2"]
        assert all(n["status"] == "ready" for n in lab.nodes.values()) and len(lab.nodes) == 5
        # a host added later joins through a running manager
        lab.kill("manager1")
        assert lab.add_host("worker") == "worker3"
        assert ("manager2", ("swarm", "join-token", "-q", "worker")) in lab.calls
        join = [a for h, a in lab.calls if h == "worker3"]
        assert len(join) == 1 and join[0][:2] == ("swarm", "join")
        assert join[0][-1] == "172.31.0.12:2377"
        assert lab.nodes["worker3"]["status"] == "ready"
    finally:
        lab.down()
    assert_gone(lab)


def test_form_failure_tears_down(fake_daemon):
    lab = FakeClusterLab("t" + secrets.token_hex(3), daemon_argv=fake_daemon,
                         fail_join="worker1")
    with pytest.raises(netlab.LabCommandError, match="join refused"):
        lab.up(managers=1, workers=1, timeout=30)
    assert_gone(lab)


def test_needs_root(monkeypatch):
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root.*sudo"):
        Lab("nolab42").up(1, 0, form=False)
    with pytest.raises(LabError, match="needs root"):
        Lab("nolab42").down()
