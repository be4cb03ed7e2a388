"""The image commands through the CLI and a real shoald (a 1-manager lab): load (and import,
its old name, with its hint), tag, push to a registry on the lab's underlay, inspect,
history, save, rm, prune -a, system df and system prune."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab
from tests import imagebuild as ib

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(not ib.LocalRegistry.available() or not ib.busybox_available(),
                                 reason="needs Debian's docker-registry and busybox-static")]
PROBE = ("import sys, urllib.request\n"
         "urllib.request.urlopen(sys.argv[1], timeout=1)\n")


@pytest.fixture(scope="module")
def setup():
    base = Path(tempfile.mkdtemp(prefix="shoal-imgcmd-"))
    lab = Lab(unique_lab_name("img"))
    proc = None
    try:
        lab.up(managers=1, workers=0)
        host = lab.hosts()[0]
        port = ib.free_port()
        registry = f"{host.address}:{port}"
        (base / "config.yml").write_text(
            "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {base / 'reg'}}}}}\n"
            f"http: {{addr: '{registry}'}}\n")
        cmd, env = lab.command(host.name, [ib.REGISTRY_BIN, "serve", str(base / "config.yml")])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: lab.exec(host.name, [sys.executable, "-c", PROBE,
                                                f"http://{registry}/v2/"]).returncode == 0,
                   timeout=20, what="the registry")
        yield lab, host, registry, base
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        lab.down()
        shutil.rmtree(base, ignore_errors=True)


# `shoal system` with the group registered, whether or not shoal/cli/__init__.py does yet
SHOAL_WITH_SYSTEM = ("import sys; from shoal.cli import main; from shoal.cli.system import "
                     "system; main.commands.setdefault('system', system); "
                     "main(prog_name='shoal')")


def shoal(lab, host, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    argv = ([sys.executable, "-c", SHOAL_WITH_SYSTEM, *args] if args[0] == "system"
            else ["shoal", *args])
    cmd, env = lab.command(host.name, argv)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if ok and done.returncode != 0:
        log = Path(host.log).read_text(errors="replace")[-4000:] if Path(host.log).exists() \
            else ""
        raise AssertionError(f"shoal {' '.join(args)}: {done.stdout}{done.stderr}\n{log}")
    return done


def test_image_commands_as_docker_s(setup):
    lab, host, registry, base = setup
    archive = ib.build_docker_save_tar(base / "bb.tar", "busybox:1",
                                       extra_files={"etc/motd": b"hello\n"})
    loaded = shoal(lab, host, "image", "load", "-i", str(archive))
    assert loaded.stdout.strip() == "Loaded image: busybox:1"
    old = shoal(lab, host, "image", "import", str(archive), "bb:old")
    assert "shoal image load -i FILE" in old.stderr and "Loaded image: bb:old" in old.stdout

    name = f"{registry}/team/bb:1"
    shoal(lab, host, "image", "tag", "busybox:1", name)
    pushed = shoal(lab, host, "image", "push", "--insecure-registry", name)
    last = pushed.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"1: digest: (sha256:[0-9a-f]{64}) size: (\d+)", last)
    assert m, pushed.stdout
    assert ": Pushed" in pushed.stdout
    again = shoal(lab, host, "image", "push", "--insecure-registry", name)
    assert ": Layer already exists" in again.stdout and last in again.stdout

    [view] = json.loads(shoal(lab, host, "image", "inspect", name).stdout)
    assert view["RepoDigests"] == [f"{registry}/team/bb@{m.group(1)}"]
    assert sorted(view["RepoTags"]) == sorted(["bb:old", "busybox:1", name])
    history = shoal(lab, host, "image", "history", "busybox:1")
    assert "tests/imagebuild.py" in history.stdout

    out = base / "saved.tar"
    shoal(lab, host, "image", "save", "-o", str(out), "busybox:1")
    if shutil.which("skopeo"):
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"docker-archive:{out}"],
                             check=True, capture_output=True, text=True).stdout
        assert json.loads(raw)["config"]["digest"] == view["Id"]
    rm = shoal(lab, host, "image", "rm", "busybox:1", "bb:old", name, "nope:1", ok=False)
    assert rm.returncode == 1 and "nope:1" in rm.stderr
    assert f"Deleted: {view['Id']}" in rm.stdout
    shoal(lab, host, "image", "load", "-i", str(out))

    df = json.loads(shoal(lab, host, "system", "df", "--format", "json").stdout)
    assert df["images"]["count"] >= 1 and df["images"]["reclaimable"] > 0
    pruned = shoal(lab, host, "image", "prune", "-a", "-f")
    assert f"deleted: {view['Id']}" in pruned.stdout
    assert re.search(r"Total reclaimed space: [1-9][\d.]*[KM]iB", pruned.stdout), pruned.stdout
    assert shoal(lab, host, "image", "ls", "-q").stdout.strip() == ""
    system = shoal(lab, host, "system", "prune", "-a", "-f", "--volumes")
    assert "Total reclaimed space: 0B" in system.stdout
    table = shoal(lab, host, "system", "df").stdout
    assert table.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    print(pushed.stdout, again.stdout, history.stdout, rm.stdout, rm.stderr, pruned.stdout, system.stdout, table, sep="\n")  # shown with -s
