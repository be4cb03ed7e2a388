"""The flag parsing of `shoal service create` and `shoal service update`: which JSON spec each of
docker's service flags becomes, what an update's -add/-rm flags do to an existing spec, and which
values are refused (a click usage error naming the flag and the form it expects).

A test of the CLI's flag parsing, not of the daemon: `Cli.call`, the one method through which
the commands reach their daemon, is replaced by a stand-in that records what would be posted and
answers as the API does. Everything above it is the real code: click's parsing, the flag types,
the spec building. Every spec posted must also decode strictly into the model
(common/strict.py, what the managers run first), so a field name the model lacks fails here.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec, strict
from common.model import (ContainerSpec, DNSConfig, LogDriver, Mount, Placement, PortConfig,
                          EndpointSpec, SecretReference, Service, ServiceSpec, TaskSpec, Ulimit,
                          NetworkAttachmentConfig)
from shoal.cli import main
from shoal.cli.client import Cli
from shoal.cli.flag_values import ULIMIT_NAMES


def _existing_service() -> dict:
    """A service as `GET /services/web` answers, with something set for each -rm flag to take."""
    container = ContainerSpec(
        image="busybox:1", command=["/bin/app"], args=["--serve"],
        env=["A=1", "B=2"], labels={"c1": "x", "c2": "y"}, user="app", dir="/srv",
        mounts=[Mount(type="volume", source="data", target="/data"),
                Mount(type="bind", source="/etc/ssl", target="/ssl", read_only=True)],
        secrets=[SecretReference(secret_id="s1", secret_name="tls", target="/run/secrets/tls")],
        cap_add=["CAP_NET_ADMIN"], cap_drop=["CAP_CHOWN"],
        sysctls={"net.core.somaxconn": "1024", "kernel.msgmax": "65536"},
        ulimits=[Ulimit("nofile", 1024, 2048), Ulimit("nproc", 100, 100)],
        groups=["audio", "video"],
        hosts=["10.0.0.1 db cache", "10.0.0.2 db", "10.0.0.3 mail"],
        dns_config=DNSConfig(nameservers=["10.0.0.53", "10.0.0.54"], search=["a.example"],
                             options=["ndots:2"]),
        tty=True, init=False, read_only=False)
    task = TaskSpec(container=container,
                    placement=Placement(constraints=["node.role==worker"],
                                        preferences=["spread=node.labels.zone", "spread=node.labels.rack"]),
                    networks=[NetworkAttachmentConfig(target="net-front")],
                    log_driver=LogDriver("json-file", {"max-size": "1m"}))
    spec = ServiceSpec(name="web", labels={"team": "a", "tier": "b"}, task_template=task,
                       endpoint_spec=EndpointSpec(ports=[PortConfig(target_port=80, published_port=8080)]))
    svc = codec.to_plain(Service(id="svc1", spec=spec))
    svc["meta"]["version"] = 7
    svc["replicas_status"] = {"running": 1, "completed": 0, "desired": 1}
    return svc


class FakeDaemon:
    """Answers the calls the service commands make, and keeps them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object, dict | None]] = []
        self.service = _existing_service()

    def call(self, method: str, path: str, body: object = None, *, params: dict | None = None,
             timeout: float = 60.0) -> object:
        self.calls.append((method, path, copy.deepcopy(body), params))
        if (method, path) == ("POST", "/services/create"):
            return {"id": "svc1"}
        if method == "GET" and path.startswith("/networks/"):
            return {"id": "net-" + path.rsplit("/", 1)[1]}
        if path.startswith("/services/"):
            return copy.deepcopy(self.service)
        raise AssertionError(f"unexpected call {method} {path}")

    def posted(self) -> dict:
        """The spec the last create or update posted, after checking it decodes into the model."""
        method, path, body, _ = self.calls[-1]
        assert method == "POST" and path in ("/services/create", "/services/svc1/update"), self.calls
        strict.decode(ServiceSpec, body["spec"])
        return body["spec"]


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    fake = FakeDaemon()
    monkeypatch.setattr(Cli, "call", lambda self, *args, **kw: fake.call(*args, **kw))
    return fake


def _run(*args: str):
    return CliRunner().invoke(main, ["--socket", "/nonexistent/shoal.sock", *args])


def create(daemon: FakeDaemon, *flags: str) -> dict:
    result = _run("service", "create", "-d", *flags, "busybox:1", "sleep", "1d")
    assert result.exit_code == 0, result.output
    return daemon.posted()


def update(daemon: FakeDaemon, *flags: str) -> dict:
    result = _run("service", "update", "-d", *flags, "web")
    assert result.exit_code == 0, result.output
    return daemon.posted()


def refused(*args: str, flag: str, says: str = "") -> str:
    """The command fails with a usage error that names `flag` (and says `says`)."""
    result = _run(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert flag in result.output, result.output
    assert says in result.output, result.output
    return result.output


def refused_create(*flags: str, flag: str, says: str = "") -> str:
    return refused("service", "create", "-d", *flags, "busybox:1", flag=flag, says=says)


def refused_update(*flags: str, flag: str, says: str = "") -> str:
    return refused("service", "update", "-d", *flags, "web", flag=flag, says=says)


# --- create ------------------------------------------------------------------------------------

def test_create_without_the_new_flags_keeps_the_defaults(daemon):
    spec = create(daemon)
    c = spec["task_template"]["container"]
    assert c["args"] == ["sleep", "1d"]
    assert (c["cap_add"], c["cap_drop"], c["sysctls"], c["ulimits"], c["groups"], c["hosts"]) == \
        ([], [], {}, [], [], [])
    assert (c["tty"], c["init"], c["read_only"]) == (False, False, False)
    assert "dns_config" not in c and "log_driver" not in spec["task_template"]


def test_create_capabilities_are_normalized_and_adding_wins(daemon):
    c = create(daemon, "--cap-add", "net_admin", "--cap-add", "CAP_SYS_TIME", "--cap-drop",
               "chown", "--cap-drop", "NET_ADMIN", "--cap-add", "net_admin")["task_template"]["container"]
    assert c["cap_add"] == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert c["cap_drop"] == ["CAP_CHOWN"]
    c = create(daemon, "--cap-drop", "ALL", "--cap-drop", "chown", "--cap-add", "kill",
               "--cap-add", "RESET")["task_template"]["container"]
    assert (c["cap_add"], c["cap_drop"]) == (["CAP_KILL"], ["ALL"])


def test_create_sysctls_ulimits_groups(daemon):
    c = create(daemon, "--sysctl", "net.core.somaxconn=1024", "--sysctl",
               "net.ipv4.ip_local_port_range=1024 65000", "--ulimit", "nofile=1024:2048",
               "--ulimit", "nproc=512", "--ulimit", "core=-1", "--ulimit", "nofile=10:20",
               "--group", "audio", "--group", "1001")["task_template"]["container"]
    assert c["sysctls"] == {"net.core.somaxconn": "1024",
                            "net.ipv4.ip_local_port_range": "1024 65000"}
    # one per name, the last given; sorted by name as docker sends them
    assert c["ulimits"] == [{"name": "core", "soft": -1, "hard": -1},
                            {"name": "nofile", "soft": 10, "hard": 20},
                            {"name": "nproc", "soft": 512, "hard": 512}]
    assert c["groups"] == ["audio", "1001"]


def test_create_hosts_and_dns(daemon):
    c = create(daemon, "--host", "db:10.0.0.5", "--host", "v6=::1", "--host", "web:[fe80::1]",
               "--host", "db:10.0.0.5", "--dns", "10.0.0.2", "--dns", "2001:db8:0:0::1",
               "--dns-search", "example.com", "--dns-search", ".", "--dns-option", "ndots:2",
               "--dns-option", "rotate")["task_template"]["container"]
    assert c["hosts"] == ["10.0.0.5 db", "::1 v6", "fe80::1 web"]
    assert c["dns_config"] == {"nameservers": ["10.0.0.2", "2001:db8::1"],
                               "search": ["example.com", "."], "options": ["ndots:2", "rotate"]}


def test_create_switches(daemon):
    c = create(daemon, "-t", "--read-only", "--init")["task_template"]["container"]
    assert (c["tty"], c["read_only"], c["init"]) == (True, True, True)
    c = create(daemon, "--tty=true", "--read-only=false", "--init=1")["task_template"]["container"]
    assert (c["tty"], c["read_only"], c["init"]) == (True, False, True)


def test_create_container_args_that_look_like_flags_are_left_alone(daemon):
    result = _run("service", "create", "-d", "--read-only", "busybox:1", "app", "--init=false",
                  "--read-only=maybe")
    assert result.exit_code == 0, result.output
    c = daemon.posted()["task_template"]["container"]
    assert c["args"] == ["app", "--init=false", "--read-only=maybe"] and c["read_only"] is True
    assert c["init"] is False


def test_create_log_driver(daemon):
    spec = create(daemon, "--log-driver", "json-file", "--log-opt", "max-size=10m",
                  "--log-opt", "max-file=3")
    assert spec["task_template"]["log_driver"] == {"name": "json-file",
                                                   "options": {"max-size": "10m", "max-file": "3"}}
    assert create(daemon, "--log-driver", "none")["task_template"]["log_driver"] == \
        {"name": "none", "options": {}}


def test_create_env_file(daemon, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FROM_SHELL", "shell value")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    env_file = tmp_path / "app.env"
    env_file.write_bytes(b"\xef\xbb\xbf# a comment\nA=1\n\n   B=two words  \r\nFROM_SHELL\n"
                         b"NOT_SET_ANYWHERE\nQUOTED=\"kept\"\nC=from file\n")
    c = create(daemon, "--env-file", str(env_file), "-e", "C=from flag", "-e", "D=4")[
        "task_template"]["container"]
    assert c["env"] == ["A=1", "B=two words  ", "FROM_SHELL=shell value", 'QUOTED="kept"',
                        "C=from flag", "D=4"]


def test_create_env_bare_name_takes_the_shells_value(daemon, monkeypatch):
    monkeypatch.setenv("TOKEN", "abc=def")
    assert create(daemon, "-e", "TOKEN")["task_template"]["container"]["env"] == ["TOKEN=abc=def"]


def test_create_entrypoint_is_split_as_a_shell_would(daemon):
    c = create(daemon, "--entrypoint", "sh -c 'echo a b'")["task_template"]["container"]
    assert c["command"] == ["sh", "-c", "echo a b"]


def test_create_mount_long_syntax(daemon, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    c = create(
        daemon,
        "--mount", "type=volume,source=data,target=/data,volume-driver=local,"
                   "volume-opt=type=nfs,\"volume-opt=o=addr=10.0.0.1,rw\",volume-label=tier=db,"
                   "volume-nocopy",
        "--mount", "type=tmpfs,dst=/scratch,tmpfs-size=64m,tmpfs-mode=1770",
        "--mount", "type=bind,src=./conf,target=/conf,readonly=true",
        "--mount", "target=/cache,ro",
    )["task_template"]["container"]
    assert c["mounts"] == [
        {"type": "volume", "source": "data", "target": "/data", "read_only": False,
         "volume_options": {"labels": {"tier": "db"}, "driver": "local",
                            "driver_opts": {"type": "nfs", "o": "addr=10.0.0.1,rw"},
                            "no_copy": True}},
        {"type": "tmpfs", "source": "", "target": "/scratch", "read_only": False,
         "tmpfs_options": {"size_bytes": 64 * 1024 ** 2, "mode": 0o1770}},
        {"type": "bind", "source": str(tmp_path / "conf"), "target": "/conf", "read_only": True},
        {"type": "volume", "source": "", "target": "/cache", "read_only": True},
    ]


def test_create_labels_and_placement_prefs(daemon):
    spec = create(daemon, "-l", "a=1", "-l", "flag", "--container-label", "x=y",
                  "--placement-pref", "spread= node.labels.zone")
    assert spec["labels"] == {"a": "1", "flag": ""}
    assert spec["task_template"]["container"]["labels"] == {"x": "y"}
    assert spec["task_template"]["placement"]["preferences"] == ["spread=node.labels.zone"]


@pytest.mark.parametrize("flags, flag, says", [
    (["--ulimit", "nofile"], "--ulimit", 'expected NAME=SOFT[:HARD] (e.g. nofile=1024:2048), got "nofile"'),
    (["--ulimit", "nofile=1:2:3"], "--ulimit", "expected NAME=SOFT[:HARD]"),
    (["--ulimit", "nofile=ten"], "--ulimit", "whole numbers"),
    (["--ulimit", "nofile=+5"], "--ulimit", "whole numbers"),
    (["--ulimit", "nofile=2048:1024"], "--ulimit", "soft limit must not be above"),
    (["--ulimit", "nofile=-1:1024"], "--ulimit", "soft limit must not be above"),
    (["--ulimit", "nofile=-2"], "--ulimit", "or -1 for unlimited"),
    (["--ulimit", "nofile=9223372036854775808"], "--ulimit", "or -1 for unlimited"),
    (["--ulimit", "as=1"], "--ulimit", 'unknown ulimit "as"'),
    (["--sysctl", "net.core.somaxconn"], "--sysctl", "expected KEY=VALUE"),
    (["--sysctl", "=1"], "--sysctl", "expected KEY=VALUE"),
    (["--sysctl", "net.core.somaxconn="], "--sysctl", "expected KEY=VALUE"),
    (["--host", "db"], "--host", 'expected HOST:IP (e.g. db:10.0.0.5), got "db"'),
    (["--host", "db:10.0.0.300"], "--host", "expected HOST:IP"),
    (["--host", ":10.0.0.1"], "--host", "expected HOST:IP"),
    (["--host", "a b:10.0.0.1"], "--host", "expected HOST:IP"),
    (["--host", "db:fe80::1%eth0"], "--host", "expected HOST:IP"),
    (["--host", "db:host-gateway"], "--host", "no host-gateway"),
    (["--dns", "dns.example"], "--dns", "expected an IP address"),
    (["--dns-search", "-bad-.com"], "--dns-search", "expected a domain name"),
    (["--dns-search", "123"], "--dns-search", "expected a domain name"),
    (["--dns-option", "two words"], "--dns-option", "expected a resolver option"),
    (["--cap-add", "net admin"], "--cap-add", "expected a capability"),
    (["--cap-drop", ""], "--cap-drop", "expected a capability"),
    (["--group", ""], "--group", "expected a group name or id"),
    (["--log-opt", "max-size=1m"], "--log-opt", "give --log-driver too"),
    (["--log-driver", "json-file", "--log-opt", "max-size"], "--log-opt", "expected KEY=VALUE"),
    (["--read-only=maybe"], "--read-only", 'expected true or false, got "maybe"'),
    (["-e", "=x"], "--env", "expected NAME=VALUE"),
    (["-e", "SURELY_NOT_SET_IN_ANY_SHELL_42"], "--env", "is not set in this environment"),
    (["-l", "=x"], "--label", "expected KEY=VALUE"),
    (["--container-label", "a b=c"], "--container-label", "expected KEY=VALUE"),
    (["--placement-pref", "spread"], "--placement-pref", "expected spread=NODE_LABEL"),
    (["--placement-pref", "pack=node.labels.x"], "--placement-pref", "only spread exists"),
    (["--entrypoint", "sh -c 'unbalanced"], "--entrypoint", "No closing quotation"),
    (["--mount", "type=bind,source=/a"], "--mount", "needs target=PATH"),
    (["--mount", "type=nfs,target=/a"], "--mount", "type is bind, volume or tmpfs"),
    (["--mount", "target=/a,colour=red"], "--mount", 'unknown mount option "colour"'),
    (["--mount", "target=/a,shared"], "--mount", "expected key=value"),
    (["--mount", "target=/a,readonly=maybe"], "--mount", "expected true, 1, false or 0"),
    (["--mount", "target=/a, type=bind"], "--mount", "no blanks around the key"),
    (["--mount", "target= /a"], "--mount", "has blanks around it"),
    (["--mount", "type=bind,source=/a,target=/b,volume-opt=o=x"], "--mount",
     "volume-* options go with type=volume, not type=bind"),
    (["--mount", "type=volume,target=/b,tmpfs-size=1m"], "--mount",
     "tmpfs-* options go with type=tmpfs"),
    (["--mount", "type=tmpfs,target=/b,tmpfs-size=lots"], "--mount", "expected a size"),
    (["--mount", "type=tmpfs,target=/b,tmpfs-mode=888"], "--mount", "expected an octal file mode"),
    (["--mount", "type=tmpfs,target=/b,tmpfs-mode=17777"], "--mount", "expected an octal file mode"),
    (["--mount", '"target=/a'], "--mount", "unexpected end of data"),
])
def test_create_refuses_bad_values(daemon, flags, flag, says):
    out = refused_create(*flags, flag=flag, says=says)
    assert "Invalid value for" in out or "Error:" in out
    assert daemon.calls == []   # nothing reached the daemon


def test_create_refuses_unreadable_or_broken_env_files(daemon, tmp_path):
    refused_create("--env-file", str(tmp_path / "missing.env"), flag="--env-file", says="")
    bad = tmp_path / "bad.env"
    bad.write_text("GOOD=1\nBAD KEY=2\n")
    refused_create("--env-file", str(bad), flag="--env-file", says='line 2: expected KEY=VALUE')
    bad.write_bytes(b"A=\xff\n")
    refused_create("--env-file", str(bad), flag="--env-file", says="not valid UTF-8")
    assert daemon.calls == []


# --- update ------------------------------------------------------------------------------------

def _changed_container(daemon: FakeDaemon, *flags: str) -> dict:
    return update(daemon, *flags)["task_template"]["container"]


def test_update_without_flags_posts_the_spec_as_it_was(daemon):
    spec = update(daemon)
    assert spec == daemon.service["spec"]
    assert daemon.calls[-1][3] == {"version": "7"}


def test_update_env_and_labels(daemon, monkeypatch):
    monkeypatch.setenv("FROM_SHELL", "s")
    spec = update(daemon, "--env-add", "B=3", "--env-add", "FROM_SHELL", "--env-rm", "A",
                  "--label-add", "tier=c", "--label-add", "new=1", "--label-rm", "team",
                  "--label-rm", "absent", "--container-label-add", "c3=z",
                  "--container-label-rm", "c1")
    assert spec["task_template"]["container"]["env"] == ["B=3", "FROM_SHELL=s"]
    assert spec["labels"] == {"tier": "c", "new": "1"}
    assert spec["task_template"]["container"]["labels"] == {"c2": "y", "c3": "z"}


def test_update_mounts_by_target(daemon):
    mounts = _changed_container(daemon, "--mount-add", "type=volume,source=other,target=/data",
                                "--mount-add", "type=tmpfs,target=/tmp,tmpfs-size=1m",
                                "--mount-rm", "/ssl")["mounts"]
    assert [(m["type"], m.get("source"), m["target"]) for m in mounts] == \
        [("volume", "other", "/data"), ("tmpfs", "", "/tmp")]
    refused_update("--mount-add", "target=/x", "--mount-add", "type=tmpfs,target=/x",
                   flag="--mount-add", says="two mounts with target '/x'")


def test_update_publish_constraints_prefs_networks(daemon):
    spec = update(daemon, "--publish-add", "9090:90", "--publish-rm", "8080",
                  "--constraint-add", "node.labels.zone==a", "--constraint-rm", "node.role==worker",
                  "--placement-pref-rm", "spread=node.labels.zone", "--placement-pref-add",
                  "spread=node.labels.dc", "--network-add", "back", "--network-rm", "front")
    tt = spec["task_template"]
    assert [(p["published_port"], p["target_port"]) for p in spec["endpoint_spec"]["ports"]] == [(9090, 90)]
    assert tt["placement"]["constraints"] == ["node.labels.zone==a"]
    assert tt["placement"]["preferences"] == ["spread=node.labels.rack", "spread=node.labels.dc"]
    assert [n["target"] for n in tt["networks"]] == ["back"]


def test_update_secrets_and_configs(daemon):
    c = _changed_container(daemon, "--secret-rm", "tls", "--secret-add", "source=key,target=k",
                           "--config-add", "app")
    assert c["secrets"] == [{"secret_name": "key", "target": "k"}]
    assert c["configs"] == [{"config_name": "app"}]


def test_update_capabilities_follow_dockers_tri_state(daemon):
    # adding what the service drops only stops the dropping; dropping what it adds, the adding
    c = _changed_container(daemon, "--cap-add", "chown", "--cap-drop", "net_admin")
    assert (c["cap_add"], c["cap_drop"]) == ([], [])
    c = _changed_container(daemon, "--cap-add", "sys_time", "--cap-drop", "kill")
    assert (c["cap_add"], c["cap_drop"]) == (["CAP_NET_ADMIN", "CAP_SYS_TIME"], ["CAP_CHOWN", "CAP_KILL"])
    # both at once: adding wins
    c = _changed_container(daemon, "--cap-add", "kill", "--cap-drop", "kill")
    assert (c["cap_add"], c["cap_drop"]) == (["CAP_KILL", "CAP_NET_ADMIN"], ["CAP_CHOWN"])
    c = _changed_container(daemon, "--cap-add", "RESET", "--cap-add", "mknod")
    assert (c["cap_add"], c["cap_drop"]) == (["CAP_MKNOD"], ["CAP_CHOWN"])
    c = _changed_container(daemon, "--cap-drop", "ALL")
    assert c["cap_drop"] == ["ALL"]


def test_update_sysctls_ulimits_groups(daemon):
    c = _changed_container(daemon, "--sysctl-add", "net.core.somaxconn=4096", "--sysctl-add",
                           "kernel.shmmax=1", "--sysctl-rm", "kernel.msgmax",
                           "--ulimit-add", "core=0", "--ulimit-add", "nofile=4096",
                           "--ulimit-rm", "nproc", "--group-add", "disk", "--group-add", "audio",
                           "--group-rm", "video")
    assert c["sysctls"] == {"net.core.somaxconn": "4096", "kernel.shmmax": "1"}
    assert c["ulimits"] == [{"name": "core", "soft": 0, "hard": 0},
                            {"name": "nofile", "soft": 4096, "hard": 4096}]
    assert c["groups"] == ["audio", "disk"]


def test_update_hosts_follow_dockers_rule(daemon):
    # HOST alone leaves every address; an entry left without a name goes
    assert _changed_container(daemon, "--host-rm", "db")["hosts"] == ["10.0.0.1 cache", "10.0.0.3 mail"]
    # HOST:IP leaves only that address
    assert _changed_container(daemon, "--host-rm", "db:10.0.0.2", "--host-add", "api:10.0.0.9",
                              "--host-add", "mail:10.0.0.3")["hosts"] == \
        ["10.0.0.1 db cache", "10.0.0.3 mail", "10.0.0.9 api"]


def test_update_dns(daemon):
    c = _changed_container(daemon, "--dns-add", "10.0.0.55", "--dns-add", "10.0.0.53",
                           "--dns-rm", "10.0.0.54", "--dns-search-add", "b.example",
                           "--dns-search-rm", "a.example", "--dns-option-add", "rotate",
                           "--dns-option-rm", "ndots:2")
    assert c["dns_config"] == {"nameservers": ["10.0.0.53", "10.0.0.55"], "search": ["b.example"],
                               "options": ["rotate"]}
    c = _changed_container(daemon, "--dns-rm", "10.0.0.53", "--dns-rm", "10.0.0.54",
                           "--dns-search-rm", "a.example", "--dns-option-rm", "ndots:2")
    assert c["dns_config"] is None


def test_update_settings_and_switches(daemon):
    spec = update(daemon, "--user", "1000:1000", "--workdir", "/app", "--hostname", "h1",
                  "--entrypoint", "/bin/sh -c", "--args", "'echo hi' there", "--reserve-cpu", "0.5",
                  "--reserve-memory", "64m", "--limit-pids", "100", "--restart-delay", "3s",
                  "--restart-max-attempts", "4", "--restart-window", "1m", "--stop-signal",
                  "SIGINT", "--replicas-max-per-node", "2", "--read-only", "--init", "--no-tty",
                  "--log-driver", "none")
    tt = spec["task_template"]
    c = tt["container"]
    assert (c["user"], c["dir"], c["hostname"], c["stop_signal"]) == ("1000:1000", "/app", "h1", "SIGINT")
    assert (c["command"], c["args"]) == (["/bin/sh", "-c"], ["echo hi", "there"])
    assert tt["resources"]["reservations"] == {"nano_cpus": 500_000_000, "memory_bytes": 64 * 1024 ** 2}
    assert tt["resources"]["pids_limit"] == 100
    assert (tt["restart_policy"]["delay"], tt["restart_policy"]["max_attempts"],
            tt["restart_policy"]["window"]) == (3.0, 4, 60.0)
    assert tt["placement"]["max_replicas"] == 2
    assert (c["read_only"], c["init"], c["tty"]) == (True, True, False)
    assert tt["log_driver"] == {"name": "none", "options": {}}


def test_update_switches_take_dockers_bool_syntax(daemon):
    c = _changed_container(daemon, "--tty=false", "--read-only=true", "--init=0")
    assert (c["tty"], c["read_only"], c["init"]) == (False, True, False)
    refused_update("--tty=yes", flag="--tty", says='expected true or false, got "yes"')


def test_update_leaves_what_no_flag_names(daemon):
    c = _changed_container(daemon, "--env-add", "Z=1")
    before = daemon.service["spec"]["task_template"]["container"]
    for key in ("cap_add", "cap_drop", "sysctls", "ulimits", "groups", "hosts", "dns_config",
                "tty", "init", "read_only", "mounts", "command", "user", "dir"):
        assert c[key] == before[key], key
    assert daemon.posted()["task_template"]["log_driver"] == {"name": "json-file",
                                                             "options": {"max-size": "1m"}}


def test_update_entrypoint_empty_goes_back_to_the_images(daemon):
    assert _changed_container(daemon, "--entrypoint", "")["command"] == []


def test_update_log_driver_replaces_the_options(daemon):
    spec = update(daemon, "--log-driver", "json-file", "--log-opt", "max-file=2")
    assert spec["task_template"]["log_driver"] == {"name": "json-file", "options": {"max-file": "2"}}
    refused_update("--log-opt", "max-file=2", flag="--log-opt", says="give --log-driver too")


def test_update_rollback_is_service_rollback(daemon):
    result = _run("service", "update", "-d", "--rollback", "web")
    assert result.exit_code == 0, result.output
    assert [(m, p) for m, p, _, _ in daemon.calls] == [("POST", "/services/web/rollback")]
    out = refused_update("--rollback", "--image", "busybox:2", flag="--image",
                         says="cannot be combined with")
    assert "--rollback" in out


@pytest.mark.parametrize("flags, flag, says", [
    (["--ulimit-add", "nofile"], "--ulimit-add", "expected NAME=SOFT[:HARD]"),
    (["--sysctl-add", "x"], "--sysctl-add", "expected KEY=VALUE"),
    (["--host-add", "db"], "--host-add", "expected HOST:IP"),
    (["--dns-add", "x"], "--dns-add", "expected an IP address"),
    (["--dns-search-add", "a..b"], "--dns-search-add", "expected a domain name"),
    (["--dns-option-add", ""], "--dns-option-add", "expected a resolver option"),
    (["--group-add", "a b"], "--group-add", "expected a group name or id"),
    (["--cap-add", "!"], "--cap-add", "expected a capability"),
    (["--env-add", "=1"], "--env-add", "expected NAME=VALUE"),
    (["--label-add", "=1"], "--label-add", "expected KEY=VALUE"),
    (["--mount-add", "target=/a,bogus=1"], "--mount-add", "unknown mount option"),
    (["--placement-pref-add", "x"], "--placement-pref-add", "expected spread=NODE_LABEL"),
    (["--args", "'"], "--args", "No closing quotation"),
    (["--reserve-memory", "lots"], "--reserve-memory", "invalid size"),
    (["--restart-delay", "soon"], "--restart-delay", "invalid duration"),
])
def test_update_refuses_bad_values(daemon, flags, flag, says):
    refused_update(*flags, flag=flag, says=says)
    assert not [c for c in daemon.calls if c[0] == "POST"]


# --- inspect --pretty ----------------------------------------------------------------------------

def test_inspect_pretty_shows_the_container_settings(daemon):
    daemon.service["spec"]["task_template"]["container"]["mounts"].append(
        {"type": "tmpfs", "source": "", "target": "/t", "read_only": False, "volume_options": None,
         "tmpfs_options": {"size_bytes": 1024, "mode": 0o700}})
    original = daemon.call

    def call(method, path, body=None, *, params=None, timeout=60.0):
        return [] if path == "/tasks" else original(method, path, body, params=params)
    daemon.call = call
    result = _run("service", "inspect", "--pretty", "web")
    assert result.exit_code == 0, result.output
    for line in ("Options:        tty", "Cap Add:        CAP_NET_ADMIN", "Cap Drop:       CAP_CHOWN",
                 "Sysctls:        kernel.msgmax=65536, net.core.somaxconn=1024",
                 "Ulimits:        nofile=1024:2048, nproc=100:100", "Groups:         audio, video",
                 "Host:           10.0.0.1 db cache", "DNS:            10.0.0.53, 10.0.0.54",
                 "DNS Search:     a.example", "DNS Options:    ndots:2",
                 "Mount:          bind /etc/ssl -> /ssl (read only)",
                 "Mount:          tmpfs - -> /t, size=1024, mode=700",
                 "Log Driver:     json-file max-size=1m"):
        assert line in result.output, result.output


# --- random values never crash the CLI ---------------------------------------------------------

def _pieces(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, max_size=12)


_NEAR_ULIMIT = st.builds(lambda name, soft, hard: f"{name}={soft}{hard}",
                         st.sampled_from(ULIMIT_NAMES + ("", "as", "NOFILE")),
                         _pieces("-0123456789 +_٣"), st.one_of(st.just(""), _pieces(":-0123456789")))
_NEAR_SYSCTL = st.builds(lambda k, sep, v: k + sep + v, _pieces("abc.=_ \t\n"),
                         st.sampled_from(["=", "", "=="]), _pieces("01 =\n"))
_NEAR_HOST = st.builds(lambda h, sep, ip: h + sep + ip, _pieces("ab-:= \x00"),
                       st.sampled_from([":", "=", ""]),
                       st.one_of(st.ip_addresses().map(str), _pieces("0123456789abcdef:.[]%")))
_MOUNT_KEYS = ("type", "source", "src", "target", "dst", "readonly", "ro", "volume-driver", "volume-opt",
               "volume-label", "volume-nocopy", "tmpfs-size", "tmpfs-mode", "bogus", "TYPE", " type")
_NEAR_MOUNT = st.lists(st.builds(lambda k, sep, v: k + sep + v, st.sampled_from(_MOUNT_KEYS),
                                 st.sampled_from(["=", "", "=="]),
                                 st.one_of(st.sampled_from(["bind", "volume", "tmpfs", "/a", "1m",
                                                            "0777", "true", "x=y", ""]),
                                           _pieces('abc/=",\n 0189km'))),
                       max_size=6).map(",".join)
_VALUES = {"--ulimit": _NEAR_ULIMIT, "--sysctl": _NEAR_SYSCTL, "--host": _NEAR_HOST, "--mount": _NEAR_MOUNT}


def _never_crashes(daemon: FakeDaemon, flag: str, text: str) -> None:
    daemon.calls.clear()
    result = _run("service", "create", "-d", flag, text, "busybox:1")
    if result.exit_code == 0:
        daemon.posted()   # what is accepted decodes into the model
        return
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), \
        (flag, text, result.output, result.exception)
    assert re.search(rf"Invalid value for '{flag}'", result.output), result.output
    assert daemon.calls == []


@pytest.mark.parametrize("flag", sorted(_VALUES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_values_give_a_usage_error_or_a_valid_spec(daemon, flag, data):
    text = data.draw(st.one_of(st.text(max_size=40), _VALUES[flag]), label="value")
    _never_crashes(daemon, flag, text)


def test_update_removing_wins_over_adding_the_same_group_or_dns_entry(daemon):
    # docker's order for these lists: the additions first, then the removals
    c = _changed_container(daemon, "--group-add", "disk", "--group-rm", "disk",
                           "--dns-add", "10.0.0.9", "--dns-rm", "10.0.0.9")
    assert c["groups"] == ["audio", "video"]
    assert c["dns_config"]["nameservers"] == ["10.0.0.53", "10.0.0.54"]
