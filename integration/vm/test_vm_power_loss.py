"""Issue 18, must-show 1: a power cut on every manager at once loses no acknowledged write.

The package's three QEMU guests (integration/vm/conftest.py: provisioned by vagrant/provision.sh,
used first by test_vm_lab.py) become a 3-manager swarm: the two workers are promoted. A client
loop on the host creates configs through each guest's local API and records every one that was
answered with success. While it writes, the three QEMU processes are SIGKILLed together: a guest
keeps what it flushed to its disk (QEMU's cache=writeback passes the flush on to the host's file,
which outlives the process) and loses what sat in its page cache. The same disks boot again, and
every manager must show every acknowledged config, with identical replicas.

The same scenario runs with shoald's test-only switch SHOAL_UNSAFE_RAFT_NO_SYNC=1, which turns
the raft journal's syncing off: there the test asserts the opposite, that acknowledged writes
were lost, so it proves the scenario can see a loss at all. To make that loss certain rather
than lucky, the guests' periodic writeback and ext4's journal commits are pushed past the
scenario for its duration: only an explicit sync moves data to the disk.

Cost: the promotions, then per case a write burst, a power cut and a second boot (the boot and
provisioning are the package's, shared with test_vm_lab.py). Select or deselect with `-m vm` / `-m "not vm"`.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field

import pytest

from integration.helpers import wait_until
from integration.vm.conftest import TIMINGS
from integration.vm.conftest import say as _say
from integration.vm.lab import Guest, GuestError, VMLab

pytestmark = [pytest.mark.vm]

TOOLS = "/vagrant/integration/vm/guest_tools.py"
UNSAFE_SWITCH = "SHOAL_UNSAFE_RAFT_NO_SYNC"
DROP_IN = "/etc/systemd/system/shoald.service.d/power-loss-test.conf"
# acknowledged writes before the cut: enough that a journal that does not sync cannot keep
# them all by luck, few enough to stay cheap under emulation
ACKS_BEFORE_CUT = int(os.environ.get("SHOAL_VM_POWER_LOSS_ACKS", "24"))


def say(request, text: str) -> None:
    _say(request, text, tag="vm power loss")


def in_parallel(guests: list[Guest], fn) -> list:
    """fn(g) for every guest at once (each guest is a slow emulated CPU of its own)."""
    results: list = [None] * len(guests)
    errors: list[str] = []

    def one(i: int, g: Guest) -> None:
        try:
            results[i] = fn(g)
        except Exception as exc:
            errors.append(f"{g.name}: {exc}")
    threads = [threading.Thread(target=one, args=(i, g)) for i, g in enumerate(guests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise GuestError("\n\n".join(errors))
    return results


def api(g: Guest, method: str, path: str, body: dict | None = None, timeout: float = 60):
    argv = ["python3", TOOLS, "api", method, path] + ([json.dumps(body)] if body else [])
    return json.loads(g.run(argv, timeout=timeout, check=True).out)


@pytest.fixture(scope="module")
def cluster(vm_lab, request):
    """The package's guests as three managers: the workers are promoted (through the CLI, as an
    operator would) and every manager must see three connected raft members."""
    lab: VMLab = vm_lab
    t0 = time.monotonic()
    first = lab.guests[0]
    workers = [x["hostname"] for x in first.shoal_json("node", "ls") if x["role"] != "manager"]
    if workers:
        first.shoal("node", "promote", *workers, timeout=300)
    wait_until(lambda: all(in_parallel(lab.guests, cluster_healthy)), timeout=420, interval=3,
               what="a leader and 3 connected raft members on every guest after the promotions")
    TIMINGS["promote"] = time.monotonic() - t0
    say(request, f"3 managers: promoted {workers or 'none'} in {TIMINGS['promote']:.0f} s")
    return lab


# ---- the guests' side ---------------------------------------------------------------------------
def set_unsafe_switch(g: Guest, on: bool) -> None:
    """The switch in shoald's environment through a systemd drop-in; shoald restarted when it
    changed, and its live environment checked (a switch that did not arrive proves nothing)."""
    content = f"[Service]\nEnvironment={UNSAFE_SWITCH}=1\n" if on else ""
    g.sh(f"""
        mkdir -p {os.path.dirname(DROP_IN)}
        if [ "$(cat {DROP_IN} 2>/dev/null)" != "$(printf '{content}')" ]; then
            if [ -n '{content}' ]; then printf '{content}' > {DROP_IN}; else rm -f {DROP_IN}; fi
            systemctl daemon-reload
            systemctl restart shoald
        fi""", timeout=120)
    env = g.sh("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value shoald)/environ").out
    assert (f"{UNSAFE_SWITCH}=1" in env.split()) == on, (g.name, on, env)


def hold_unsynced_data(g: Guest) -> None:
    """From here on only a sync reaches the disk: no periodic writeback, no ext4 commit within
    the scenario (both return to their defaults at the next boot). Everything before is synced,
    so the cut takes exactly what was written after this and not synced."""
    g.sh("sysctl -q -w vm.dirty_writeback_centisecs=0 vm.dirty_expire_centisecs=360000 && "
         "mount -o remount,commit=3600 / && sync", timeout=120)


def cluster_healthy(g: Guest) -> bool:
    """shoald answers, is in the swarm, knows a leader and sees all three raft members."""
    swarm = api(g, "GET", "/info")["swarm"]
    raft = swarm.get("raft") or {}
    return (swarm.get("state") == "active" and bool(swarm.get("leader_addr"))
            and len(raft.get("members", [])) == 3
            and all(m["connected"] for m in raft["members"]))


def applied_all_committed(g: Guest) -> bool:
    raft = api(g, "GET", "/info")["swarm"]["raft"]
    return raft["applied_index"] >= raft["commit_index"]


def replica(g: Guest) -> dict[str, tuple]:
    """This manager's configs as its own replica has them: name -> (id, version, data)."""
    return {c["spec"]["name"]: (c["id"], c["meta"]["version"], c["spec"]["data"])
            for c in api(g, "GET", "/configs")}


# ---- the client loop ----------------------------------------------------------------------------
@dataclass
class WriteLoop:
    """One writer per guest, each creating configs through its guest's local API (followers
    forward to the leader). A write counts as acknowledged once its success answer is back on
    the host, which is no part of the power cut."""
    prefix: str
    acked: dict[str, float] = field(default_factory=dict)   # name -> when its answer came
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, g: Guest) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            name = f"{self.prefix}-{g.name}-{i:04d}"
            data = base64.b64encode(name.encode()).decode()
            try:
                reply = api(g, "POST", "/configs/create", {"name": name, "data": data})
            except Exception:  # noqa: BLE001 - a write that was not answered is not acknowledged
                with self._lock:
                    self.failed += 1
                continue
            if reply.get("id"):
                with self._lock:
                    self.acked[name] = time.monotonic()

    def count(self) -> int:
        with self._lock:
            return len(self.acked)


# ---- the scenario -------------------------------------------------------------------------------
CASES = {"journal-synced": False, "unsafe-no-sync": True}
# The control case (syncing off must lose writes) costs a second power cut and boot, 4-7 min
# under emulation: the default run (CI's) keeps to the synced case to stay within its budget.
# SHOAL_VM_POWER_LOSS_UNSAFE=1 runs the control too (README: "Power loss").
RUN_CONTROL = os.environ.get("SHOAL_VM_POWER_LOSS_UNSAFE") == "1"


@pytest.mark.parametrize("case", list(CASES))
def test_power_cut_on_every_manager_loses_no_acknowledged_write(cluster, case, request):
    lab: VMLab = cluster
    unsafe = CASES[case]
    if unsafe and not RUN_CONTROL:
        pytest.skip("the unsafe control case runs with SHOAL_VM_POWER_LOSS_UNSAFE=1 (a second "
                    "power cut and boot: 4-7 min)")
    t0 = time.monotonic()
    if not all(g.alive() for g in lab.guests):
        # an earlier case failed between its cut and its boot: its disks are still good
        lab.power_cut()
        lab.power_on()
        lab.wait_ready()
    in_parallel(lab.guests, lambda g: set_unsafe_switch(g, unsafe))
    wait_until(lambda: all(in_parallel(lab.guests, cluster_healthy)), timeout=240, interval=3,
               what="a leader and 3 connected raft members on every manager")
    in_parallel(lab.guests, hold_unsynced_data)

    loop = WriteLoop(prefix=f"pl-{case}-{int(time.time())}")
    writers = [threading.Thread(target=loop.run, args=(g,), daemon=True) for g in lab.guests]
    t_load = time.monotonic()
    for w in writers:
        w.start()
    try:
        wait_until(lambda: loop.count() >= ACKS_BEFORE_CUT, timeout=300, interval=0.05,
                   what=f"{ACKS_BEFORE_CUT} acknowledged writes")
    finally:
        # the cut comes while the writers still write: the requests they sent are in flight as
        # it lands (stopped first only so that they do not spin on the dead guests' sockets)
        loop.stop.set()
        spread = lab.power_cut()
        t_cut = time.monotonic()
        for w in writers:
            w.join(timeout=60)
    acked = dict(loop.acked)
    since_last_ack = t_cut - max(acked.values())
    say(request, f"{case}: {len(acked)} writes acknowledged in {t_cut - t_load:.1f} s "
                 f"({loop.failed} unanswered); all 3 guests killed within {spread * 1000:.1f} ms, "
                 f"{since_last_ack:.2f} s after the last acknowledgement")

    lab.power_on()
    TIMINGS[f"{case}: boot after the cut"] = lab.wait_ready()
    t_up = time.monotonic()
    wait_until(lambda: all(in_parallel(lab.guests, cluster_healthy)), timeout=420, interval=3,
               what="a leader and 3 connected raft members on every manager after the cut")
    TIMINGS[f"{case}: raft healthy after the boot"] = time.monotonic() - t_up

    # settled: every manager applied what it knows committed, and the replicas are the same
    # twice in a row; then what is missing is lost, not late
    seen: list[list[dict]] = []

    def settled():
        caught_up = all(in_parallel(lab.guests, applied_all_committed))
        now = in_parallel(lab.guests, replica)
        seen.append(now)
        return (caught_up and all(r == now[0] for r in now) and len(seen) > 1
                and seen[-2] == now)
    try:
        wait_until(settled, timeout=120, interval=3, what="identical replicas on 3 managers")
    except AssertionError:
        if not seen:
            raise
        # the assertions below tell what differs
    replicas = dict(zip((g.name for g in lab.guests), seen[-1]))
    lost = {name: sorted(set(acked) - set(r)) for name, r in replicas.items()}
    lost_everywhere = sorted(set(acked) - set().union(*replicas.values()))
    TIMINGS[case] = time.monotonic() - t0
    say(request, f"{case}: {len(lost_everywhere)} of {len(acked)} acknowledged writes lost "
                 f"on every manager; per manager {({k: len(v) for k, v in lost.items()})}; "
                 f"scenario {TIMINGS[case]:.0f} s")

    if unsafe:
        # the control: without syncing, the cut must cost acknowledged writes, or this scenario
        # could not tell a journal that syncs from one that does not
        assert lost_everywhere, (f"no acknowledged write lost with {UNSAFE_SWITCH}=1: the cut "
                                 f"did not take the unsynced journal ({len(acked)} acked)")
    else:
        assert not any(lost.values()), f"acknowledged writes lost by the power cut: {lost}"
        first = seen[-1][0]
        assert all(r == first for r in seen[-1]), "the managers' replicas differ after the cut"
