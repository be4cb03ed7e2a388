"""The OCI spec the executor assembles, checked without root or runc."""
from __future__ import annotations

import os

import pytest

from common import errors
from common.model import DNSConfig, Mount, TmpfsOptions, Ulimit
from worker.executor import ContainerConfig, ocispec
from worker.executor.ocispec import runtime_spec
from worker.images import Image
from worker.volumes import VolumeStore


def _config(**changes) -> ContainerConfig:
    cfg = ContainerConfig(id="t" * 25, name="web.1.x", image="busybox:1", command=["sh"],
                          args=[], env=[], workdir="", user="", hostname="", labels={},
                          mounts=[], memory_limit=0, nano_cpus=0, pids_limit=0,
                          stop_signal="SIGTERM", stop_grace=10.0, netns_path=None,
                          extra_binds=[])
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def test_a_secret_onto_a_directory_of_the_image_is_refused_by_name(tmp_path):
    """Issue 13, defect 8: a secret or config target that is a directory in the image failed
    in runc; the node says which target and why (the API cannot know the image's paths)."""
    rootfs = tmp_path / "bundle" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "srv" / "conf").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    image = Image(ref="busybox:1", id="sha256:" + "0" * 64, config={}, layers=[], size=0, created="")
    with pytest.raises(errors.InvalidArgument) as exc:
        runtime_spec(_config(extra_binds=[(str(secret), "/srv/conf", True)]), image,
                     tmp_path / "bundle", "/shoal/t", VolumeStore(tmp_path / "volumes", users=lambda name: []))
    assert "'/srv/conf' is a directory in image busybox:1" in exc.value.message
    spec = runtime_spec(_config(extra_binds=[(str(secret), "/srv/conf/app.ini", True)]), image,
                        tmp_path / "bundle", "/shoal/t", VolumeStore(tmp_path / "volumes", users=lambda name: []))
    assert any(m["destination"] == "/srv/conf/app.ini" for m in spec["mounts"])


# ---- ContainerSpec's Docker options in the OCI spec -----------------------------------------
IMAGE = Image(ref="busybox:1", id="sha256:" + "0" * 64, config={}, layers=[], size=0, created="")
NETWORK_RESOLV = "nameserver 127.0.0.11\noptions ndots:0\n"  # what worker/network binds


def _spec(tmp_path, image: Image = IMAGE, **changes) -> dict:
    bundle = tmp_path / "bundle"
    etc = bundle / "rootfs" / "etc"
    if not etc.exists():
        etc.mkdir(parents=True)
        (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                    "app:x:1000:1000::/home/app:/bin/sh\n")
        (etc / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app\nvideo:x:44:\n")
    return runtime_spec(_config(**changes), image, bundle, "/shoal/t",
                        VolumeStore(tmp_path / "volumes", users=lambda name: []))


def _mount(spec: dict, destination: str) -> dict:
    return next(m for m in spec["mounts"] if m["destination"] == destination)


@pytest.fixture
def every_cap_available(monkeypatch):
    monkeypatch.setattr(ocispec, "available_caps", lambda: frozenset(ocispec.ALL_CAPS))


def test_cap_add_and_drop_apply_to_the_default_set_in_docker_s_order(tmp_path,
                                                                     every_cap_available):
    caps = _spec(tmp_path, cap_add=["net_admin", "CAP_CHOWN"], cap_drop=["mknod", "Cap_Kill"])
    caps = caps["process"]["capabilities"]
    expected = [c for c in ocispec.DEFAULT_CAPS if c not in ("CAP_MKNOD", "CAP_KILL")]
    assert caps["bounding"] == expected + ["CAP_NET_ADMIN"]  # CHOWN was there already: once
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    only = _spec(tmp_path, cap_drop=["all"], cap_add=["SYS_TIME"])["process"]["capabilities"]
    assert only["bounding"] == ["CAP_SYS_TIME"]
    none = _spec(tmp_path, cap_drop=["ALL"])["process"]["capabilities"]
    assert none["bounding"] == none["effective"] == []
    # add ALL wins over drop ALL, as in Docker; the named drops still go
    most = _spec(tmp_path, cap_add=["ALL"], cap_drop=["ALL", "SYS_ADMIN"])
    assert most["process"]["capabilities"]["bounding"] == \
        [c for c in ocispec.ALL_CAPS if c != "CAP_SYS_ADMIN"]


def test_a_non_root_user_gets_capabilities_in_its_bounding_set_only(tmp_path,
                                                                    every_cap_available):
    caps = _spec(tmp_path, user="app", cap_add=["NET_ADMIN"])["process"]["capabilities"]
    assert caps == {"bounding": ocispec.DEFAULT_CAPS + ["CAP_NET_ADMIN"]}


def test_capabilities_the_node_cannot_give_or_nobody_knows_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ocispec, "available_caps",
                        lambda: frozenset(ocispec.ALL_CAPS) - {"CAP_SYS_RESOURCE"})
    with pytest.raises(errors.InvalidArgument, match="CAP_SYS_RESOURCE is not supported") as exc:
        _spec(tmp_path, cap_add=["sys_resource"])
    assert exc.value.field == "cap_add"
    everything = _spec(tmp_path, cap_add=["ALL"])["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_RESOURCE" not in everything and "CAP_SYS_ADMIN" in everything
    assert _spec(tmp_path, cap_drop=["SYS_RESOURCE"])  # dropping what it lacks is fine
    with pytest.raises(errors.InvalidArgument, match="unknown capability 'CAP_FLY'") as exc:
        _spec(tmp_path, cap_drop=["CAP_FLY"])
    assert exc.value.field == "cap_drop"


def test_available_caps_are_the_kernel_s_within_the_daemon_s_bounding_set():
    caps = ocispec.available_caps()
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    assert caps <= set(ocispec.ALL_CAPS[:last + 1])
    assert "CAP_CHOWN" in caps


def test_sysctls_go_to_linux_sysctl_and_only_namespaced_ones(tmp_path):
    wanted = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "20"}
    assert _spec(tmp_path, sysctls=wanted)["linux"]["sysctl"] == wanted
    assert "sysctl" not in _spec(tmp_path)["linux"]
    for key in ("kernel.hostname", "vm.swappiness", "net/../../kernel/x", "net"):
        with pytest.raises(errors.InvalidArgument, match="is not allowed") as exc:
            _spec(tmp_path, sysctls={key: "1"})
        assert exc.value.field == "sysctls"
    with pytest.raises(errors.InvalidArgument, match="is not allowed"):
        _spec(tmp_path, sysctls={"net.ipv4.ip_forward": "1"}, host_network=True)
    assert _spec(tmp_path, sysctls={"kernel.sem": "1 2 3 4"}, host_network=True)
    with pytest.raises(errors.InvalidArgument, match="one non-empty line"):
        _spec(tmp_path, sysctls={"kernel.sem": ""})


def test_ulimits_become_rlimits(tmp_path):
    spec = _spec(tmp_path, ulimits=[Ulimit("nofile", 1024, 4096), Ulimit("core", 0, 0)])
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024},
                                          {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}]
    assert "rlimits" not in _spec(tmp_path)["process"]
    with pytest.raises(errors.InvalidArgument, match="unknown ulimit 'files'"):
        _spec(tmp_path, ulimits=[Ulimit("files", 1, 1)])
    with pytest.raises(errors.InvalidArgument, match="soft limit 5 must be between 0 and the "
                       "hard limit 4"):
        _spec(tmp_path, ulimits=[Ulimit("nproc", 5, 4)])


def test_read_only_root_and_its_own_etc_files(tmp_path):
    spec = _spec(tmp_path, read_only=True, mounts=[Mount(type="tmpfs", target="/tmp")])
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    for name in ("hosts", "hostname", "resolv.conf"):  # read-only with the root, as Docker's
        assert "ro" in _mount(spec, f"/etc/{name}")["options"]
    assert "rw" in _mount(spec, "/tmp")["options"]
    assert _spec(tmp_path)["root"]["readonly"] is False
    assert "rw" in _mount(_spec(tmp_path), "/etc/hosts")["options"]


def test_tty_sets_the_terminal_and_term(tmp_path):
    spec = _spec(tmp_path, tty=True)
    assert spec["process"]["terminal"] is True and "TERM=xterm" in spec["process"]["env"]
    assert _spec(tmp_path)["process"]["terminal"] is False
    image = Image(ref="busybox:1", id=IMAGE.id, config={"Env": ["TERM=vt100"]}, layers=[],
                  size=0, created="")
    assert "TERM=vt100" in _spec(tmp_path, image, tty=True)["process"]["env"]


def test_init_binds_a_static_tini_and_runs_the_command_under_it(tmp_path):
    if not any(os.path.exists(p) for p in ocispec.INIT_CANDIDATES):
        pytest.skip("no tini on this machine (apt-get install tini)")
    spec = _spec(tmp_path, init=True, command=["sh", "-c", "x"])
    assert spec["process"]["args"] == ["/sbin/docker-init", "--", "sh", "-c", "x"]
    init = _mount(spec, "/sbin/docker-init")
    assert "ro" in init["options"] and init["type"] == "bind"
    assert ocispec._is_static_elf(init["source"])
    assert _spec(tmp_path)["process"]["args"] == ["sh"]


def test_init_without_a_static_tini_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(ocispec, "INIT_CANDIDATES", [str(tmp_path / "no-tini")])
    with pytest.raises(errors.FailedPrecondition, match=r"apt-get install tini\), which ships "
                       "/usr/bin/tini-static") as exc:
        _spec(tmp_path, init=True)
    assert exc.value.field == "init"
    dynamic = next((p for p in ("/usr/bin/tini", "/bin/sh", "/usr/bin/env")
                    if os.path.exists(p) and not ocispec._is_static_elf(p)), None)
    if dynamic is None:
        pytest.skip("no dynamically linked program to stand for a dynamic tini")
    with pytest.raises(errors.FailedPrecondition, match=f"{dynamic} is dynamically linked"):
        ocispec.init_path([dynamic])


def test_is_static_elf(tmp_path):
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not ocispec._is_static_elf(str(tmp_path / "script"))
    if os.path.exists("/bin/busybox"):  # busybox-static
        assert ocispec._is_static_elf("/bin/busybox")
    if os.path.exists("/usr/bin/tini-static"):
        assert ocispec._is_static_elf("/usr/bin/tini-static")


def test_groups_join_the_user_s_own_supplementary_gids(tmp_path):
    spec = _spec(tmp_path, user="app", groups=["video", "1234", "staff"])
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50, 44, 1234]}
    with pytest.raises(errors.InvalidArgument, match="'wheel' is not in the image's /etc/group") \
            as exc:
        _spec(tmp_path, groups=["wheel"])
    assert exc.value.field == "groups"


def test_hosts_entries_are_appended_one_line_each(tmp_path):
    _spec(tmp_path, hosts=["10.0.0.5 db db.internal", "fd00::1\tcache",
                           "10.0.0.6 a\n10.0.0.7 smuggled"])
    hosts = (tmp_path / "bundle" / "etc" / "hosts").read_text().splitlines()
    assert hosts[-3:] == ["10.0.0.5\tdb db.internal", "fd00::1\tcache",
                          "10.0.0.6\ta 10.0.0.7 smuggled"]
    assert hosts[0] == "127.0.0.1\tlocalhost"
    with pytest.raises(errors.InvalidArgument, match="no IP address"):
        _spec(tmp_path, hosts=["db 10.0.0.5"])


def test_dns_config_over_the_host_s_resolv_conf(tmp_path, monkeypatch):
    monkeypatch.setattr(ocispec, "_host_resolv_conf",
                        lambda: "# host\nnameserver 10.9.9.9\nsearch host.example\noptions edns0\n")
    _spec(tmp_path, dns=DNSConfig(nameservers=["192.0.2.53", "fd00::53"]))
    assert (tmp_path / "bundle" / "etc" / "resolv.conf").read_text() == \
        "nameserver 192.0.2.53\nnameserver fd00::53\nsearch host.example\noptions edns0\n"
    _spec(tmp_path, dns=DNSConfig(search=["svc.example"], options=["ndots:2"]))
    assert (tmp_path / "bundle" / "etc" / "resolv.conf").read_text() == \
        "nameserver 10.9.9.9\nsearch svc.example\noptions ndots:2\n"
    _spec(tmp_path, dns=DNSConfig())  # nothing given: the host's, as it is
    assert (tmp_path / "bundle" / "etc" / "resolv.conf").read_text().startswith("# host\n")


def test_dns_config_behind_the_embedded_dns_keeps_its_nameserver(tmp_path):
    network_file = tmp_path / "network-resolv.conf"
    network_file.write_text(NETWORK_RESOLV)
    binds = [(str(network_file), "/etc/resolv.conf", True)]
    spec = _spec(tmp_path, extra_binds=binds, dns=DNSConfig(
        nameservers=["192.0.2.53", "fd00::53"], search=["svc.example"], options=["timeout:1"]))
    bound = _mount(spec, "/etc/resolv.conf")
    assert bound["source"] == str(tmp_path / "bundle" / "etc" / "resolv.conf")
    assert "ro" in bound["options"]
    assert [m["destination"] for m in spec["mounts"]].count("/etc/resolv.conf") == 1
    assert (tmp_path / "bundle" / "etc" / "resolv.conf").read_text() == (
        "nameserver 127.0.0.11\nnameserver fd00::53\nsearch svc.example\n"
        "options timeout:1 ndots:0\n")
    _spec(tmp_path, extra_binds=binds, dns=DNSConfig(options=["ndots:3"]))
    assert (tmp_path / "bundle" / "etc" / "resolv.conf").read_text() == \
        "nameserver 127.0.0.11\noptions ndots:3\n"  # the user's ndots wins
    assert _mount(_spec(tmp_path, extra_binds=binds), "/etc/resolv.conf")["source"] == \
        str(network_file)  # no DNS config: the network's own file, as before


def test_tmpfs_options_size_and_mode(tmp_path):
    spec = _spec(tmp_path, mounts=[
        Mount(type="tmpfs", target="/a", tmpfs_options=TmpfsOptions(size_bytes=1 << 20,
                                                                     mode=0o700)),
        Mount(type="tmpfs", target="/b", read_only=True),
        Mount(type="tmpfs", target="/c", tmpfs_options=TmpfsOptions(size_bytes=0, mode=0o1770))])
    assert _mount(spec, "/a")["options"] == ["nosuid", "nodev", "mode=700", "size=1048576", "rw"]
    assert _mount(spec, "/b")["options"] == ["nosuid", "nodev", "mode=1777", "ro"]
    assert _mount(spec, "/c")["options"] == ["nosuid", "nodev", "mode=1770", "rw"]
    with pytest.raises(errors.InvalidArgument, match="beyond 7777"):
        _spec(tmp_path, mounts=[Mount(type="tmpfs", target="/d",
                                      tmpfs_options=TmpfsOptions(mode=0o10000))])


def test_a_hard_limit_the_node_cannot_grant_is_refused_by_name(tmp_path, monkeypatch):
    import resource
    own = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if own == resource.RLIM_INFINITY:
        pytest.skip("this process has no hard nproc limit to exceed")
    monkeypatch.setattr(ocispec, "available_caps",
                        lambda: frozenset(ocispec.ALL_CAPS) - {"CAP_SYS_RESOURCE"})
    with pytest.raises(errors.InvalidArgument, match="lacks CAP_SYS_RESOURCE"):
        _spec(tmp_path, ulimits=[Ulimit("nproc", 1, own + 1)])
    assert _spec(tmp_path, ulimits=[Ulimit("nproc", 1, own)])
    monkeypatch.setattr(ocispec, "available_caps", lambda: frozenset(ocispec.ALL_CAPS))
    assert _spec(tmp_path, ulimits=[Ulimit("nproc", 1, own + 1)])
    nr_open = int(open("/proc/sys/fs/nr_open").read())
    with pytest.raises(errors.InvalidArgument, match="above this node's fs.nr_open"):
        _spec(tmp_path, ulimits=[Ulimit("nofile", 1, nr_open + 1)])
