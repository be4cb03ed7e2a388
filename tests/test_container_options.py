"""ContainerSpec's Docker options: capabilities, sysctls, ulimits, read-only root, init, groups,
extra hosts, DNS config, tmpfs options (and the task's log driver): refused at the API with the
field's path, mapped from a task to the executor's config, and observed in real runc containers.

The container tests need root, runc and busybox-static; the rest runs anywhere.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors, strict
from common.model import (DNSConfig, LogDriver, Mount, ServiceSpec, Task, TaskSpec, TmpfsOptions,
                          Ulimit)
from manager.specs import services as specs
from worker.executor import ContainerConfig, Executor
from worker.executor import ocispec
from worker.images import ImageStore
from worker.taskrunner import container_config

in_runc = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None or not ib.busybox_available(),
    reason="needs root, runc and busybox-static (apt-get install runc busybox-static)")
GROUP_FILE = b"root:x:0:\nstaff:x:50:\nnogroup:x:65534:\n"
CAP_CHOWN, CAP_NET_ADMIN = 0, 12


# ---- the API's checks ---------------------------------------------------------------------------
def _service(container: dict[str, Any], **task_template: Any) -> dict:
    return {"name": "web", "task_template": {"container": {"image": "busybox:1", **container},
                                             **task_template}}


def _refused(body: dict) -> errors.InvalidArgument:
    with pytest.raises(errors.InvalidArgument) as exc:
        specs.parse_service_spec(body)
    return exc.value


C = "task_template.container"
REFUSALS = [
    # (container fields, task template fields, the field named, words of the message)
    ({"cap_add": ["NET_ADMN"]}, {}, f"{C}.cap_add[0]", "did you mean NET_ADMIN"),
    ({"cap_add": ["CHOWN", "cap_frob"]}, {}, f"{C}.cap_add[1]", "with or without CAP_"),
    ({"cap_drop": ["everything"]}, {}, f"{C}.cap_drop[0]", "or ALL"),
    ({"sysctls": {"kernel.hostname": "x"}}, {}, f"{C}.sysctls.kernel.hostname",
     "net.*, fs.mqueue.*"),
    ({"sysctls": {"vm.swappiness": "1"}}, {}, f"{C}.sysctls.vm.swappiness", "set the others on"),
    ({"sysctls": {"net..x": "1"}}, {}, f"{C}.sysctls.net..x", "no sysctl name"),
    ({"sysctls": {"net.ipv4.ip_forward": "1\nkernel.x=1"}}, {}, f"{C}.sysctls.net.ipv4.ip_forward",
     "one non-empty line"),
    ({"ulimits": [{"name": "files", "soft": 1, "hard": 1}]}, {}, f"{C}.ulimits[0].name",
     "nofile"),
    ({"ulimits": [{"name": "nofile", "soft": 10, "hard": 5}]}, {}, f"{C}.ulimits[0].soft",
     "above the hard limit"),
    ({"ulimits": [{"name": "nproc", "soft": -1, "hard": 5}]}, {}, f"{C}.ulimits[0].soft", ">= 0"),
    ({"ulimits": [{"name": "core", "soft": 0, "hard": 0}, {"name": "core", "soft": 1, "hard": 1}]},
     {}, f"{C}.ulimits[1].name", "also given at [0]"),
    ({"groups": ["staff group"]}, {}, f"{C}.groups[0]", "no group"),
    ({"groups": ["4294967295"]}, {}, f"{C}.groups[0]", "out of range"),
    ({"hosts": ["db:10.0.0.5"]}, {}, f"{C}.hosts[0]", "'IP hostname [alias...]'"),
    ({"hosts": ["10.0.0.500 db"]}, {}, f"{C}.hosts[0]", "no IP address"),
    ({"hosts": ["10.0.0.5 db bad/alias"]}, {}, f"{C}.hosts[0]", "no hostname"),
    ({"dns_config": {"nameservers": ["dns.example"]}}, {}, f"{C}.dns_config.nameservers[0]",
     "no IP address"),
    ({"dns_config": {"search": ["-bad.example"]}}, {}, f"{C}.dns_config.search[0]",
     "no domain name"),
    ({"dns_config": {"options": ["ndots:two"]}}, {}, f"{C}.dns_config.options[0]",
     "ndots takes a number"),
    ({"dns_config": {"options": ["timeout:1 attempts:2"]}}, {}, f"{C}.dns_config.options[0]",
     "one resolv.conf option"),
    ({"mounts": [{"type": "tmpfs", "target": "/t", "tmpfs_options": {"size_bytes": -1}}]}, {},
     f"{C}.mounts[0].tmpfs_options.size_bytes", ">= 0"),
    ({"mounts": [{"type": "tmpfs", "target": "/t", "tmpfs_options": {"mode": 0o10000}}]}, {},
     f"{C}.mounts[0].tmpfs_options.mode", "at most 0o7777"),
    ({"mounts": [{"type": "volume", "target": "/t", "tmpfs_options": {}}]}, {},
     f"{C}.mounts[0].tmpfs_options", "type=tmpfs only"),
    ({"mounts": [{"type": "tmpfs", "target": "/t", "volume_options": {}}]}, {},
     f"{C}.mounts[0].volume_options", "type=volume only"),
    ({"mounts": [{"type": "volume", "source": "v", "target": "/t",
                  "volume_options": {"driver": "nfs"}}]}, {},
     f"{C}.mounts[0].volume_options.driver", "driver=local"),
    ({"mounts": [{"type": "volume", "source": "v", "target": "/t",
                  "volume_options": {"driver_opts": {"size": "1g"}}}]}, {},
     f"{C}.mounts[0].volume_options.driver_opts.size", "type, device, o"),
    ({"mounts": [{"type": "volume", "source": "v", "target": "/t",
                  "volume_options": {"labels": {"": "x"}}}]}, {},
     f"{C}.mounts[0].volume_options.labels", "non-empty key"),
    ({}, {"log_driver": {"name": "syslog"}}, "task_template.log_driver.name", "json-file or none"),
    ({}, {"log_driver": {"name": "json-file", "options": {"compress": "true"}}},
     "task_template.log_driver.options.compress", "max-size and max-file only"),
    ({}, {"log_driver": {"name": "json-file", "options": {"max-size": "ten"}}},
     "task_template.log_driver.options.max-size", "e.g. 10m"),
    ({}, {"log_driver": {"name": "json-file", "options": {"max-size": "0"}}},
     "task_template.log_driver.options.max-size", "above 0"),
    ({}, {"log_driver": {"name": "json-file", "options": {"max-file": "0"}}},
     "task_template.log_driver.options.max-file", "integer >= 1"),
    ({}, {"log_driver": {"name": "none", "options": {"max-file": "2"}}},
     "task_template.log_driver.options.max-file", "none takes no option"),
]


@pytest.mark.parametrize("container,template,field,words", REFUSALS,
                         ids=[r[2].rsplit(".", 1)[-1] + f"-{i}" for i, r in enumerate(REFUSALS)])
def test_each_bad_option_is_refused_naming_its_field(container, template, field, words):
    err = _refused(_service(container, **template))
    assert err.field == field
    assert words in err.message and err.message.startswith(field)


def test_the_options_as_docker_spells_them_are_accepted():
    spec = specs.parse_service_spec(_service({
        "tty": True, "open_stdin": True, "init": True, "read_only": True,
        "cap_add": ["net_admin", "CAP_SYS_TIME", "all"], "cap_drop": ["ALL", "Mknod"],
        "sysctls": {"net.ipv4.ip_forward": "1", "net.core.somaxconn": "1024",
                    "kernel.shmmax": "68719476736", "fs.mqueue.msg_max": "20"},
        "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048},
                    {"name": "core", "soft": 0, "hard": 0}],
        "groups": ["staff", "1234"],
        "hosts": ["10.0.0.5 db db.internal", "fd00::5\tcache"],
        "dns_config": {"nameservers": ["10.0.0.2", "fd00::53"], "search": ["svc.example", "."],
                       "options": ["ndots:2", "timeout:1", "rotate"]},
        "mounts": [{"type": "tmpfs", "target": "/run/x",
                    "tmpfs_options": {"size_bytes": 1 << 20, "mode": 0o700}},
                   {"type": "volume", "source": "data", "target": "/data",
                    "volume_options": {"driver": "local", "labels": {"a": "b"},
                                       "driver_opts": {"type": "tmpfs", "device": "tmpfs",
                                                       "o": "size=1m"}}}]},
        log_driver={"name": "json-file", "options": {"max-size": "10m", "max-file": "3"}}))
    assert spec.task_template.container.ulimits[0] == Ulimit("nofile", 1024, 2048)
    assert spec.task_template.log_driver == LogDriver("json-file", {"max-size": "10m",
                                                                    "max-file": "3"})


def test_a_standalone_container_s_options_are_checked_as_a_service_s():
    c = strict.decode(type(ServiceSpec().task_template.container),
                      {"image": "busybox:1", "cap_add": ["NOPE"]}, "container")
    with pytest.raises(errors.InvalidArgument) as exc:
        specs.validate_container_spec(c, "container")
    assert exc.value.field == "container.cap_add[0]"


def test_the_manager_and_the_node_know_the_same_names():
    """manager/ may not import worker/: each keeps its own list, and they must agree."""
    assert ["CAP_" + c for c in specs.CAPABILITIES] == ocispec.ALL_CAPS
    assert specs.ULIMITS == ocispec.ULIMITS
    assert set(specs.IPC_SYSCTLS) == ocispec.IPC_SYSCTLS


# ---- task -> container config -----------------------------------------------------------------
def test_container_config_maps_every_option_of_the_task():
    dns = DNSConfig(["10.0.0.2"], ["svc.example"], ["ndots:1"])
    log_driver = LogDriver("json-file", {"max-size": "1m"})
    task = Task(id="t" * 25, service_name="web", slot=1, spec=TaskSpec(log_driver=log_driver))
    c = task.spec.container
    c.image = "busybox:1"
    c.tty, c.open_stdin, c.init, c.read_only = True, True, True, True
    c.cap_add, c.cap_drop = ["NET_ADMIN"], ["MKNOD"]
    c.sysctls = {"net.ipv4.ip_forward": "1"}
    c.ulimits = [Ulimit("nofile", 1, 2)]
    c.groups, c.hosts, c.dns_config = ["staff"], ["10.0.0.5 db"], dns
    cfg = container_config(task, "node1")
    assert (cfg.tty, cfg.open_stdin, cfg.init, cfg.read_only) == (True, True, True, True)
    assert (cfg.cap_add, cfg.cap_drop) == (["NET_ADMIN"], ["MKNOD"])
    assert cfg.sysctls == {"net.ipv4.ip_forward": "1"} and cfg.ulimits == [Ulimit("nofile", 1, 2)]
    assert (cfg.groups, cfg.hosts, cfg.dns, cfg.log_driver) == (["staff"], ["10.0.0.5 db"], dns,
                                                                log_driver)
    # copies: the executor's config never aliases the task's lists
    cfg.cap_add.append("X")
    assert c.cap_add == ["NET_ADMIN"]
    defaults = container_config(Task(id="u" * 25), "node1")
    assert (defaults.init, defaults.read_only, defaults.dns, defaults.log_driver) == \
        (False, False, None, None)


# ---- real containers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    """busybox:1, with a `staff` group (gid 50) in its /etc/group."""
    return ib.busybox_store(tmp_path_factory.mktemp("images"),
                            extra_files={"etc/group": GROUP_FILE})


def _cfg(cid: str, script: str, **kw: Any) -> ContainerConfig:
    return ContainerConfig(id=cid, name=f"svc.1.{cid}", image="busybox:1",
                           command=["sh", "-c", script], stop_grace=1.0, **kw)


async def _output(ex: Executor, cfg: ContainerConfig) -> tuple[int, list[str]]:
    """Run to its end and remove: (exit code, output lines, stdout and stderr)."""
    await ex.create(cfg)
    try:
        await ex.start(cfg.id)
        info = await asyncio.wait_for(ex.wait(cfg.id), 20)
        lines = [entry.line async for entry in ex.logs(cfg.id)]
    finally:
        await ex.remove(cfg.id)
    return info.exit_code, lines


def _run(images_root: Path, ex_root: Path, cfg: ContainerConfig) -> tuple[int, list[str]]:
    async def scenario():
        return await _output(Executor(ex_root, ImageStore(images_root)), cfg)
    return asyncio.run(scenario())


def _caps(lines: list[str], which: str) -> int:
    return int(next(x for x in lines if x.startswith(which + ":")).split()[1], 16)


@in_runc
def test_cap_drop_all_takes_chown_away(images_root, ex_root):
    script = "chown 65534 /tmp && echo chowned"
    code, lines = _run(images_root, ex_root, _cfg("chown-default", script))
    assert (code, lines) == (0, ["chowned"])
    code, lines = _run(images_root, ex_root, _cfg("chown-none", script, cap_drop=["ALL"]))
    assert code != 0 and "Operation not permitted" in " ".join(lines), lines


@in_runc
def test_cap_add_is_effective_for_root_and_bounding_only_for_others(images_root,
                                                                    ex_root):
    script = "grep ^Cap /proc/self/status"
    _, default = _run(images_root, ex_root, _cfg("caps-default", script))
    _, added = _run(images_root, ex_root, _cfg("caps-add", script, cap_add=["net_admin"]))
    assert not _caps(default, "CapEff") >> CAP_NET_ADMIN & 1
    assert _caps(added, "CapEff") >> CAP_NET_ADMIN & 1
    assert _caps(added, "CapEff") >> CAP_CHOWN & 1
    _, nobody = _run(images_root, ex_root, _cfg("caps-nobody", script, user="nobody",
                                                cap_add=["CAP_NET_ADMIN"]))
    assert _caps(nobody, "CapEff") == 0
    assert _caps(nobody, "CapBnd") >> CAP_NET_ADMIN & 1


@in_runc
def test_sysctls_are_set_in_the_container_s_namespaces(images_root, ex_root):
    script = "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax"
    code, lines = _run(images_root, ex_root, _cfg("sysctl", script, sysctls={
        "net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789"}))
    assert (code, lines) == (0, ["1", "123456789"])
    _, lines = _run(images_root, ex_root, _cfg("sysctl-default", script))
    assert lines[0] == "0"  # a new network namespace starts with forwarding off


@in_runc
def test_ulimit_nofile_is_the_process_s_limit(images_root, ex_root):
    code, lines = _run(images_root, ex_root, _cfg(
        "ulimit", "ulimit -n; ulimit -Hn; ulimit -c",
        ulimits=[Ulimit("nofile", 1234, 2345), Ulimit("core", 0, 0)]))
    assert (code, lines) == (0, ["1234", "2345", "0"])


@in_runc
def test_read_only_root_refuses_writes_but_mounts_and_etc_files_work(images_root,
                                                                     ex_root, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    script = ("touch /x 2>&1 || echo root-refused; touch /tmp/y && echo tmp-ok; "
              "cat /etc/hostname /run/secrets/s; grep -c localhost /etc/hosts; "
              "test -s /etc/resolv.conf || test -f /etc/resolv.conf && echo resolv-ok")
    code, lines = _run(images_root, ex_root, _cfg(
        "readonly", script, read_only=True, hostname="ro-host",
        mounts=[Mount(type="tmpfs", target="/tmp")],
        extra_binds=[(str(secret), "/run/secrets/s", True)]))
    assert code == 0, lines
    assert "Read-only file system" in lines[0] and lines[1] == "root-refused", lines
    assert lines[2:] == ["tmp-ok", "ro-host", "s3cret", "2", "resolv-ok"]


@in_runc
def test_init_is_pid_1_and_forwards_the_stop_signal(images_root, ex_root):
    script = ("tr '\\0' ' ' < /proc/1/cmdline; echo; echo pid $$; "
              "grep PPid /proc/$$/status | tr -d '\\t'")
    code, lines = _run(images_root, ex_root, _cfg("init", script, init=True))
    assert code == 0, lines
    assert lines[0].startswith("/sbin/docker-init -- sh -c ") and lines[1] != "pid 1"
    assert lines[2] == "PPid:1"

    async def stop() -> tuple[int, float]:
        # A plain `sleep` as pid 1 has no handler for SIGTERM: only tini makes it stop.
        ex = Executor(ex_root, ImageStore(images_root))
        cfg = ContainerConfig(id="init-stop", name="svc.1.init-stop", image="busybox:1",
                              command=["sleep", "60"], init=True, stop_grace=5.0)
        await ex.create(cfg)
        try:
            await ex.start(cfg.id)
            await asyncio.sleep(0.3)
            began = time.monotonic()
            await ex.stop(cfg.id)
            info = await ex.wait(cfg.id)
            return info.exit_code, time.monotonic() - began
        finally:
            await ex.remove(cfg.id)
    code, took = asyncio.run(stop())
    assert code == 128 + 15 and took < 3, (code, took)


@in_runc
def test_groups_by_name_and_number_are_supplementary(images_root, ex_root):
    code, lines = _run(images_root, ex_root, _cfg("groups", "id -G",
                                                  groups=["staff", "1234"]))
    assert code == 0 and lines[0].split() == ["0", "50", "1234"], lines

    async def unknown():
        ex = Executor(ex_root, ImageStore(images_root))
        with pytest.raises(errors.InvalidArgument, match="'wheel' is not in the image's "
                           "/etc/group") as exc:
            await ex.create(_cfg("groups-bad", "id", groups=["wheel"]))
        assert exc.value.field == "groups"
        assert "groups-bad" not in {c.id for c in ex.list()}
    asyncio.run(unknown())


@in_runc
def test_hosts_and_dns_config_reach_the_files(images_root, ex_root):
    code, lines = _run(images_root, ex_root, _cfg(
        "names", "cat /etc/hosts /etc/resolv.conf",
        hosts=["10.1.2.3 db db.internal", "fd00::7 cache"],
        dns=DNSConfig(nameservers=["192.0.2.53"], search=["svc.example", "example"],
                      options=["ndots:2", "timeout:1"])))
    assert code == 0
    assert "10.1.2.3\tdb db.internal" in lines and "fd00::7\tcache" in lines
    assert lines[-3:] == ["nameserver 192.0.2.53", "search svc.example example",
                          "options ndots:2 timeout:1"]


@in_runc
def test_tmpfs_size_and_mode(images_root, ex_root):
    script = ("grep ' /scratch ' /proc/mounts; stat -c %a /scratch; "
              "dd if=/dev/zero of=/scratch/f bs=1024 count=2048 2>&1 || echo full")
    code, lines = _run(images_root, ex_root, _cfg(
        "tmpfs", script, mounts=[Mount(type="tmpfs", target="/scratch", tmpfs_options=
                                       TmpfsOptions(size_bytes=1 << 20, mode=0o700))]))
    assert code == 0
    options = lines[0].split()[3].split(",")
    assert "size=1024k" in options and "mode=700" in options, lines
    assert lines[1] == "700" and lines[-1] == "full"
