"""The VM lab: Debian 12 guests under QEMU, wired together on loopback, driven over virtio-serial.

Each guest boots Debian's own kernel (which has IPVS, unlike the kernel of a machine without
loadable modules) from a qcow2 overlay of the cached image (image.py). Their only NIC is on one
Ethernet segment that QEMU carries as UDP multicast on 127.0.0.1 (`-netdev socket,mcast=`):
no host bridge, no tap device, no route out. The host drives each guest through the agent
listening on a virtio-serial port (guest/shoal-vm-agent). The source tree is shared read-only
with 9p at /vagrant, where Vagrant syncs it; a per-lab directory at /shoal-lab carries the join
tokens and images.

    lab = VMLab(n=3); lab.start(); lab.wait_ready()
    lab.guests[0].sh("ipvsadm -Ln")
    lab.stop()        # kills exactly the QEMU processes this lab started

A guest's disk outlives its QEMU process until stop(): `power_cut()` SIGKILLs every guest at once
and `power_on()` boots the same disks again (integration/vm/test_vm_power_loss.py).

Run `python -m integration.vm.lab up` for an interactive lab (see README, "VM lab").
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from integration.vm.image import CACHE, REPO, Image, ensure_host_tools, ensure_image

SUBNET = "10.53.0"
QEMU = os.environ.get("SHOAL_VM_QEMU", "qemu-system-x86_64")
PROVISION = "/vagrant/vagrant/provision.sh"
# the tree the guests install shoal from (default: this one); another worktree can be tried
SRC = Path(os.environ.get("SHOAL_VM_SRC", str(REPO))).resolve()


class GuestError(AssertionError):
    pass


@dataclass
class Result:
    argv: list[str]
    rc: int
    out: str
    err: str

    def check(self) -> "Result":
        if self.rc != 0:
            raise GuestError(f"{shlex.join(self.argv)} exited {self.rc}\n--- stdout ---\n"
                             f"{self.out[-4000:]}\n--- stderr ---\n{self.err[-4000:]}")
        return self


@dataclass
class Guest:
    name: str
    index: int
    ip: str
    run_dir: Path
    proc: Optional[subprocess.Popen] = None
    _sock: Optional[socket.socket] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1
    _pending: dict = field(default_factory=dict)
    _buf: bytes = b""

    @property
    def agent_path(self) -> Path:
        return self.run_dir / f"{self.name}.agent"

    @property
    def console_log(self) -> Path:
        return self.run_dir / f"{self.name}.console.log"

    def forget_connection(self) -> None:
        """Drop the agent connection and whatever was half-read on it (its QEMU is gone)."""
        with self._lock:
            with contextlib.suppress(OSError):
                if self._sock:
                    self._sock.close()
            self._sock = None
            self._buf = b""
            self._pending.clear()

    def alive(self) -> bool:
        # a guest attached to without its process (an interactive lab) counts as alive
        return self.proc is None or self.proc.poll() is None

    # -- the agent protocol (one JSON object per line each way) --
    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(self.agent_path))
            self._sock = s
        return self._sock

    def run(self, argv: list[str], timeout: float = 120, stdin: str = "",
            env: Optional[dict] = None, check: bool = False) -> Result:
        """Run argv in the guest; returns when it exits (rc 124 when it overran ``timeout``)."""
        with self._lock:
            # unique across connections: a reply to an abandoned request (an earlier client that
            # gave up) may still be queued in the port and must not be taken for this one
            req_id = f"{os.getpid()}-{self._next_id}-{random.getrandbits(32):08x}"
            self._next_id += 1
            s = self._connect()
            s.sendall((json.dumps({"id": req_id, "argv": argv, "timeout": timeout,
                                   "stdin": stdin, "env": env or {}}) + "\n").encode())
        deadline = time.monotonic() + timeout + 30
        while True:
            with self._lock:
                if req_id in self._pending:
                    reply = self._pending.pop(req_id)
                    break
                s.settimeout(0.5)
                try:
                    chunk = s.recv(1 << 20)
                except socket.timeout:
                    chunk = None
                if chunk == b"":
                    self._sock = None
                    raise GuestError(f"{self.name}: agent connection closed "
                                     f"(QEMU {'running' if self.alive() else 'exited'})")
                if chunk:
                    self._buf += chunk
                    while b"\n" in self._buf:
                        line, self._buf = self._buf.split(b"\n", 1)
                        msg = json.loads(line)
                        self._pending[msg.get("id")] = msg
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name}: no answer to {shlex.join(argv)} in {timeout + 30}s")
            if not self.alive():
                raise GuestError(f"{self.name}: QEMU exited ({self.proc.returncode}) during "
                                 f"{shlex.join(argv)}")
        res = Result(argv, reply["rc"], reply["out"], reply["err"])
        return res.check() if check else res

    def sh(self, script: str, timeout: float = 120, check: bool = True, **kw) -> Result:
        return self.run(["sh", "-c", script], timeout=timeout, check=check, **kw)

    def shoal(self, *args: str, timeout: float = 120, check: bool = True) -> Result:
        return self.run(["shoal", *args], timeout=timeout, check=check)

    def shoal_json(self, *args: str, timeout: float = 120):
        return json.loads(self.shoal(*args, "--format", "json", timeout=timeout).out)

    def ping_agent(self, timeout: float) -> None:
        """Wait until the guest has booted far enough for its agent to answer."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise GuestError(f"{self.name}: QEMU exited ({self.proc.returncode}) while booting"
                                 f"\n{tail(self.console_log)}")
            try:
                if self.agent_path.exists():
                    self.run(["true"], timeout=5, check=True)
                    return
            except (OSError, GuestError) as exc:
                last = exc
                with contextlib.suppress(OSError):
                    if self._sock:
                        self._sock.close()
                self._sock = None
            time.sleep(1)
        raise GuestError(f"{self.name}: agent did not answer within {timeout:.0f}s ({last})\n"
                         f"{tail(self.console_log)}")


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({path}: {exc})"
    return f"--- last {lines} lines of {path} ---\n" + "\n".join(text[-lines:])


def kvm_works(image: Image, log=sys.stderr) -> bool:
    """Can this machine's KVM boot the guest kernel? Probed once per host kernel and QEMU.

    Some hosts expose /dev/kvm but cannot run a stock kernel in it (nested virtualisation
    without the features it needs): the kernel then never prints a line. The probe boots the
    guest kernel without a root filesystem, which panics within a second or two when KVM works.
    """
    if os.environ.get("SHOAL_VM_ACCEL") in ("kvm", "tcg"):
        return os.environ["SHOAL_VM_ACCEL"] == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    verdict = CACHE / ("kvm-" + hashlib.sha256(
        f"{os.uname().release}\0{qemu_version}\0".encode() + image.kernel.read_bytes()
    ).hexdigest()[:16])
    if verdict.exists():
        return verdict.read_text().strip() == "yes"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "console"
        p = subprocess.Popen([QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
                              "-no-user-config", "-display", "none", "-no-reboot",
                              "-kernel", str(image.kernel),
                              "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
                              "-serial", f"file:{out}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        text = out.read_text(errors="replace") if out.exists() else ""
    ok = "Kernel panic" in text or "VFS:" in text
    verdict.write_text("yes\n" if ok else "no\n")
    print(f"vm lab: KVM {'works' if ok else 'cannot boot the guest kernel'}; "
          f"using {'KVM' if ok else 'software emulation (TCG)'}", file=log)
    return ok


def _die_with_parent() -> None:
    """In the QEMU child: SIGKILL when the process that started it dies, however it dies, so a
    killed test run leaves no guests behind (they run in sessions of their own, out of reach
    of a terminal's Ctrl-C, so that stop() decides when they go)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class VMLab:
    def __init__(self, n: int = 3, memory_mb: int = 1024, image: Optional[Image] = None,
                 run_dir: Optional[Path] = None, log=sys.stderr,
                 disk_cache: str = "unsafe") -> None:
        self.n = n
        # QEMU's cache mode for the guests' disks. "unsafe" ignores the guests' flushes, fine
        # for guests that never outlive their disks; a power-loss test wants "writeback", where
        # a guest's flush reaches the host's disk and anything it did not flush may be lost.
        self.disk_cache = disk_cache
        self.memory_mb = memory_mb
        self.log = log
        self.image = image
        self.build_seconds = 0.0
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="shoal-vm-", dir="/var/tmp"))
        self.share = self.run_dir / "share"
        self.guests = [Guest(f"vm{i + 1}", i + 1, f"{SUBNET}.{11 + i}", self.run_dir)
                       for i in range(n)]
        self.accel = "tcg"
        # one multicast group and port per lab: two labs on one machine never share a segment
        self.mcast = f"239.53.{random.randint(0, 255)}.{random.randint(1, 254)}:" \
                     f"{random.randint(20000, 60000)}"

    # -- lifecycle --
    def start(self) -> None:
        ensure_host_tools(self.log)
        if shutil.which(QEMU) is None:
            raise RuntimeError(f"{QEMU} is missing: apt-get install qemu-system-x86 "
                               f"(scripts/setup.sh installs it)")
        if self.image is None:
            self.image, self.build_seconds = ensure_image(self.log)
        self.share.mkdir(parents=True, exist_ok=True)
        (self.share / "tokens").mkdir(exist_ok=True)
        self.accel = "kvm" if kvm_works(self.image, self.log) else "tcg"
        for g in self.guests:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            str(self.image.rootfs), str(self.overlay(g))], check=True)
            self._launch(g)

    def overlay(self, g: Guest) -> Path:
        return self.run_dir / f"{g.name}.qcow2"

    def _launch(self, g: Guest) -> None:
        # append: a guest booted again keeps the log of its earlier lives
        with open(self.run_dir / f"{g.name}.qemu.log", "ab") as log:
            g.proc = subprocess.Popen(self.qemu_argv(g, self.overlay(g)), stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_die_with_parent)

    def power_cut(self) -> float:
        """SIGKILL every guest's QEMU at once, as a power cut takes a rack: what a guest had
        not flushed to its disk is gone, what it flushed is in the overlay (kept for power_on).
        Returns the seconds between the first and the last kill."""
        procs = [g.proc for g in self.guests if g.proc is not None and g.proc.poll() is None]
        t0 = time.monotonic()
        for p in procs:     # all signals first, then the waits: no guest outlives another
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        spread = time.monotonic() - t0
        for p in procs:
            p.wait()
        for g in self.guests:
            g.forget_connection()
        return spread

    def power_on(self) -> None:
        """Boot every guest again from the disk it had (after power_cut); then wait_ready()."""
        for g in self.guests:
            if g.proc is not None and g.proc.poll() is None:
                raise RuntimeError(f"{g.name} is still running (pid {g.proc.pid})")
            with contextlib.suppress(FileNotFoundError):
                g.agent_path.unlink()   # ping_agent must wait for the new QEMU's socket
            self._launch(g)

    def qemu_argv(self, g: Guest, overlay: Path) -> list[str]:
        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel = ["-accel", "tcg,thread=multi", "-cpu", os.environ.get("SHOAL_VM_CPU", "max")]
        cmdline = ("root=/dev/vda rw console=ttyS0 quiet net.ifnames=0 panic=-1 mitigations=off "
                   f"shoalvm.hostname={g.name} shoalvm.addr={g.ip}/24")
        return [QEMU, "-name", g.name, *accel, "-smp", "1", "-m", str(self.memory_mb),
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", cmdline,
                "-drive", f"file={overlay},if=virtio,format=qcow2,cache={self.disk_cache},"
                          f"discard=unmap",
                "-netdev", f"socket,id=net0,mcast={self.mcast},localaddr=127.0.0.1",
                "-device", f"virtio-net-pci,netdev=net0,mac=52:54:00:53:00:{g.index:02x}",
                "-virtfs", f"local,path={SRC},mount_tag=shoalsrc,security_model=none,"
                           f"readonly=on,id=shoalsrc",
                "-virtfs", f"local,path={self.share},mount_tag=shoalrun,security_model=none,"
                           f"id=shoalrun",
                "-chardev", f"socket,id=agent,path={g.agent_path},server=on,wait=off",
                "-device", "virtio-serial-pci",
                "-device", "virtserialport,chardev=agent,name=shoal.agent",
                "-serial", f"file:{g.console_log}"]

    def wait_ready(self, timeout: float = 600) -> float:
        t0 = time.monotonic()
        errors: list[str] = []

        def one(g: Guest) -> None:
            try:
                g.ping_agent(timeout)
            except Exception as exc:
                errors.append(str(exc))
        threads = [threading.Thread(target=one, args=(g,)) for g in self.guests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise GuestError("\n\n".join(errors))
        return time.monotonic() - t0

    def stop(self) -> None:
        """Kill the QEMU processes this lab started (by PID, nothing else), remove its files."""
        for g in self.guests:
            with contextlib.suppress(OSError):
                if g._sock:
                    g._sock.close()
            if g.proc and g.proc.poll() is None:
                g.proc.terminate()
        for g in self.guests:
            if g.proc:
                try:
                    g.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    g.proc.kill()
                    g.proc.wait()
        for g in self.guests:
            with contextlib.suppress(OSError):
                self.overlay(g).unlink()

    def remove(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- provisioning: the Vagrant script, with the environment Vagrant would give it --
    def provision_env(self, g: Guest, managers: int, opts: str = "") -> dict:
        return {"SHOAL_ROLE": "manager" if g.index <= managers else "worker",
                "SHOAL_ADVERTISE_ADDR": g.ip,
                "SHOAL_MANAGER_ADDR": self.guests[0].ip,
                "SHOAL_TOKEN_DIR": "/shoal-lab/tokens",
                "SHOAL_SRC": "/vagrant",
                "SHOAL_OPTS": opts,
                "SHOAL_JOIN_TIMEOUT": "600",
                "SHOAL_LAST": "1" if g.index == self.n else "0"}

    def provision(self, managers: int = 1, opts: str = "", timeout: float = 900,
                  together: bool = False) -> dict[str, Result]:
        """provision.sh on the first manager, then on the others at once (as vagrant-libvirt
        brings machines up in parallel; the joiners wait for the tokens). ``together``: on the
        first one too, so that every guest installs shoal at the same time (only for a fresh
        lab: a joiner must not find the tokens of an earlier swarm)."""
        results: dict[str, Result] = {}
        first = self.guests[0]
        if not together:
            results[first.name] = self._provision_one(first, managers, opts, timeout)
        errors: list[str] = []

        def one(g: Guest) -> None:
            try:
                results[g.name] = self._provision_one(g, managers, opts, timeout)
            except Exception as exc:
                errors.append(f"{g.name}: {exc}")
        threads = [threading.Thread(target=one, args=(g,))
                   for g in (self.guests if together else self.guests[1:])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise GuestError("provisioning failed:\n" + "\n\n".join(errors))
        return results

    def _provision_one(self, g: Guest, managers: int, opts: str, timeout: float) -> Result:
        # the output also goes to the shared directory: readable from the host while it runs
        log = f"/shoal-lab/{g.name}.provision.log"
        argv = ["bash", "-c", f"bash {PROVISION} 2>&1 | tee -a {log}; exit ${{PIPESTATUS[0]}}"]
        env = self.provision_env(g, managers, opts)
        r = g.run(argv, timeout=timeout, env=env)
        if r.rc != 0 and "file changed as we read it" in r.out:
            # the tree changed under the script's tar (a checkout being edited while the tests
            # run); the script is safe to run again
            r = g.run(argv, timeout=timeout, env=env)
        return r.check()

    # -- diagnostics --
    def collect_logs(self, dest: Optional[Path] = None) -> Path:
        """Console logs, each guest's journal and shoald log, into ``dest``."""
        dest = dest or (self.run_dir / "logs")
        dest.mkdir(parents=True, exist_ok=True)
        for g in self.guests:
            for src in (self.run_dir / f"{g.name}.console.log", self.run_dir / f"{g.name}.qemu.log",
                        self.share / f"{g.name}.provision.log"):
                if src.exists():
                    shutil.copy(src, dest / src.name)
            if not g.alive():
                continue
            for what, script in (("journal", "journalctl -b --no-pager"),
                                 ("shoald", "journalctl -u shoald --no-pager"),
                                 ("state", "ip -br addr; ip route; ipvsadm -Ln; nft list ruleset;"
                                           " shoal node ls; shoal service ls; runc list")):
                try:
                    r = g.sh(script + " 2>&1", timeout=60, check=False)
                    (dest / f"{g.name}.{what}.log").write_text(r.out + r.err)
                except Exception as exc:
                    (dest / f"{g.name}.{what}.log").write_text(f"could not collect: {exc}\n")
        return dest

    def snapshot_network(self, dest: Path) -> Path:
        """Every guest's network state now, in each of its network namespaces: what a failed
        routing-mesh check needs, taken while the failure is still there (the logs of the whole
        module are collected only at its end, after later scenarios have rebuilt everything)."""
        dest.mkdir(parents=True, exist_ok=True)
        per_ns = ("ip -d link; ip addr; ip route; ip neigh; bridge fdb show; "
                  "ipvsadm -Ln --stats; ipvsadm -Lnc; nft list ruleset; ss -tanp")
        script = ("for ns in /proc/1/ns/net $(findmnt -rn -t nsfs -o TARGET | sort -u); do "
                  "echo \"=== netns $ns\"; "
                  f"nsenter --net=\"$ns\" sh -c '{per_ns}' 2>&1; done; "
                  "echo '=== shoald (last 200 lines)'; journalctl -u shoald --no-pager -n 200")
        for g in self.guests:
            if not g.alive():
                continue
            try:
                r = g.sh(script, timeout=120, check=False)
                (dest / f"{g.name}.network.log").write_text(r.out + r.err)
            except Exception as exc:
                (dest / f"{g.name}.network.log").write_text(f"could not collect: {exc}\n")
        return dest


USAGE = """usage: python -m integration.vm.lab up [GUESTS] [MANAGERS]
       python -m integration.vm.lab exec RUN_DIR GUEST -- COMMAND..."""


def _stop_on_signal(signum, frame):
    # SIGTERM/SIGHUP end the lab like Ctrl-C does: the guests are killed, not left behind
    # (QEMU runs in sessions of its own and would outlive us)
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """`up`: boot and provision a lab and keep it until Ctrl-C; `exec`: a command in a guest."""
    if argv[:1] == ["exec"] and len(argv) >= 4:
        run_dir, name = Path(argv[1]), argv[2]
        cmd = argv[4:] if argv[3] == "--" else argv[3:]
        r = Guest(name, 0, "", run_dir).run(cmd, timeout=3600)
        sys.stdout.write(r.out)
        sys.stderr.write(r.err)
        return r.rc
    if argv[:1] != ["up"]:
        print(USAGE, file=sys.stderr)
        return 2
    n = int(argv[1]) if len(argv) > 1 else 3
    managers = int(argv[2]) if len(argv) > 2 else 1
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    lab = VMLab(n=n)
    try:
        lab.start()
        print(f"booting {n} guests ({lab.accel}) in {lab.run_dir} ...", flush=True)
        print(f"ready in {lab.wait_ready():.0f} s; provisioning ...", flush=True)
        for name, r in lab.provision(managers=managers, opts=os.environ.get("SHOAL_OPTS", "")).items():
            print(f"--- {name}\n{r.out}", flush=True)
        for g in lab.guests:       # the agent serves one client at a time: let `exec` in
            if g._sock:
                g._sock.close()
                g._sock = None
        print(f"lab up; console logs in {lab.run_dir}. Commands in a guest:\n"
              f"  python -m integration.vm.lab exec {lab.run_dir} vm1 -- shoal node ls\n"
              f"Ctrl-C stops the lab.", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        lab.stop()
        lab.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
