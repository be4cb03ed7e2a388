"""A real one-member raft manager, in-process, with three simulated Ready nodes (n1..n3): the
decisions of the orchestrators, scheduler, dispatcher and updater are proven on it by writing
what the nodes' agents would write (status reports). tests/conftest.py offers it as the `run`
fixture."""
import asyncio
import io
import time
from pathlib import Path

from common.model import Cluster, Node, NodeDescription, NodeStatus, Resources
from common.nodestate import NodeFiles, NodeState
from manager.manager import Manager
from manager.state.store import Transaction

SCENARIO_LIMIT = 120.0  # the longest scenario takes under 30 s
ADDR = "127.0.0.93"  # raft listens on ADDR:2378; a loopback address of its own avoids clashes


async def wait(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Harness:
    def __init__(self, m: Manager) -> None:
        self.m = m

    def tasks(self, svc, desired="running"):
        return [t for t in self.m.store.by_index("tasks", "service_id", f"svc-{svc}")
                if desired is None or t.desired_state == desired]

    def on(self, svc):
        out = {}
        for t in self.tasks(svc):
            if t.node_id:
                out[t.node_id] = out.get(t.node_id, 0) + 1
        return out

    async def report(self, task, state, **extra):
        await self.m.dispatcher.report_status(task.node_id, [{"task_id": task.id, "state": state, **extra}])

    async def run_all(self, svc):
        for t in self.tasks(svc):
            if t.node_id and t.status.state != "running":
                await self.report(t, "running")

    async def set_node(self, node_id, **changes):
        node = self.m.store.get("nodes", node_id)
        for k, v in changes.items():
            if k == "state":
                node.status.state = v
            elif k == "availability":
                node.spec.availability = v
            elif k == "labels":
                node.spec.labels = v
        await self.m.propose(Transaction().update("nodes", node))


def seed_cluster() -> Transaction:
    """The cluster object and three Ready nodes n1..n3 that every scenario starts from."""
    # No agents heartbeat here: a long period keeps the simulated nodes Ready.
    cluster = Cluster(id="c1")
    cluster.spec.dispatcher.heartbeat_period = 3600.0
    txn = Transaction().create("clusters", cluster)
    for i in range(1, 4):
        txn.create("nodes", Node(id=f"n{i}", status=NodeStatus(state="ready", addr=f"10.9.0.{i}"),
                                 description=NodeDescription(hostname=f"node{i}",
                                                             resources=Resources(4 * 10**9, 8 << 30))))
    return txn


def run_scenario(tmp_path: Path, scenario) -> None:
    """Runs `await scenario(Harness(m))` on a fresh leader with three Ready nodes n1..n3."""
    async def main():
        files = NodeFiles(tmp_path)
        files.prepare()
        files.save_raft_secret(b"s" * 32)
        state = NodeState(node_id="m1", cluster_id="c1", role="manager", advertise_addr=ADDR,
                          listen_addr=f"{ADDR}:2377")
        m = Manager(files, state)
        await m.start()
        try:
            await wait(lambda: m.is_leader)
            await m.propose(seed_cluster())
            await _within(SCENARIO_LIMIT, scenario(Harness(m)), "the scenario")
        finally:
            await _within(30.0, m.stop(), "stopping the manager")
    asyncio.run(main())


async def _within(limit: float, coro, what: str):
    """Await `coro`; a hang past `limit` fails with every task's stack (pytest's faulthandler
    dump shows only the threads, all idle in the event loop)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if done:
        return task.result()
    stacks = io.StringIO()
    for t in asyncio.all_tasks():
        if t is not asyncio.current_task():
            t.print_stack(file=stacks)
    task.cancel()
    raise AssertionError(f"{what} still running after {limit:g} s; the tasks:\n{stacks.getvalue()}")
