"""The simulated executor (worker/sim): its state machine driven by the real TaskController,
failure injection, shutdown, and the checks on SimulatedNodes' arguments."""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from common import codec, errors, tokens
from common.model import ContainerSpec, Task, TaskSpec, TaskStatus
from worker.executor import ContainerConfig
from worker.sim.executor import (SimBehaviour, SimulatedExecutor, SimulatedImages,
                                 SimulatedSecretMounts)
from worker.sim.nodes import SimulatedNodes, parse_manager
from worker.taskrunner import TaskRunner

def _task(tid: str, desired: str = "running") -> Task:
    return Task(id=tid, service_id="svc", service_name="svc", slot=1, node_id="n1",
                spec=TaskSpec(container=ContainerSpec(image="busybox:1")),
                desired_state=desired, status=TaskStatus(state="assigned"))


def _runner(behaviour: SimBehaviour, runs: Counter) -> tuple[TaskRunner, list[dict]]:
    reports: list[dict] = []

    async def send(updates: list[dict]) -> None:
        reports.extend(updates)

    runner = TaskRunner(SimulatedExecutor(behaviour, runs), SimulatedImages(), "sim-00000",  # type: ignore[arg-type]
                        send, secret_mounts=SimulatedSecretMounts())  # type: ignore[arg-type]
    runner.backend_drain = 0.0
    return runner, reports


async def _until(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _states(reports: list[dict], tid: str) -> list[str]:
    return [r["state"] for r in reports if r["task_id"] == tid]


def test_task_goes_preparing_starting_running_after_the_delay():
    async def main() -> None:
        runs: Counter = Counter()
        runner, reports = _runner(SimBehaviour(start_delay=0.2), runs)
        await runner.start()
        ctl_task = _task("t1")
        t0 = asyncio.get_running_loop().time()
        await runner.apply({"tasks": [codec.to_plain(ctl_task)], "index": 1})
        await _until(lambda: runner.controllers["t1"].state == "running")
        assert asyncio.get_running_loop().time() - t0 >= 0.2
        await _until(lambda: "running" in _states(reports, "t1"))
        # Batched reports keep only the newest state per task; the controller saw each.
        assert runs == {"t1": 1}
        info = runner.executor.inspect("t1")
        assert info.state == "running" and info.pid >= 10_000_000  # never a real pid
        # Told to stop: shut down, the simulated process exited, nothing restarted.
        await runner.apply({"tasks": [codec.to_plain(_task("t1", "shutdown"))], "index": 2})
        await _until(lambda: runner.controllers["t1"].state == "shutdown")
        await _until(lambda: "shutdown" in _states(reports, "t1"))
        assert runner.executor.inspect("t1").state == "stopped"
        assert runs == {"t1": 1}
        await runner.stop()

    asyncio.run(main())


def test_states_in_order():
    """Every state the controller reports, unbatched, in order."""
    async def main() -> None:
        runner, _ = _runner(SimBehaviour(start_delay=0.1), Counter())
        seen: list[str] = []
        runner.report = lambda update: seen.append(update["state"])  # type: ignore[method-assign]
        await runner.start()
        await runner.apply({"tasks": [codec.to_plain(_task("t2"))], "index": 1})
        await _until(lambda: "running" in seen)
        assert seen == ["accepted", "preparing", "starting", "running"]
        await runner.stop()

    asyncio.run(main())


def test_failure_injection_fails_with_the_exit_code():
    async def main() -> None:
        runs: Counter = Counter()
        runner, reports = _runner(SimBehaviour(start_delay=0.05, fail_rate=1.0, exit_code=3,
                                               fail_after=0.05), runs)
        await runner.start()
        await runner.apply({"tasks": [codec.to_plain(_task("t3"))], "index": 1})
        await _until(lambda: runner.controllers["t3"].state == "failed")
        await _until(lambda: "failed" in _states(reports, "t3"))
        failed = [r for r in reports if r["task_id"] == "t3" and r["state"] == "failed"][-1]
        assert failed["exit_code"] == 3 and "simulated failure" in failed["message"]
        assert runs == {"t3": 1}
        await runner.stop()

    asyncio.run(main())


def test_fail_rate_is_a_rate():
    async def main() -> None:
        ex = SimulatedExecutor(SimBehaviour(start_delay=0, fail_rate=0.3, fail_after=0,
                                            rng=random.Random(7)), Counter())
        for i in range(400):
            await ex.create(ContainerConfig(id=f"c{i}", name="", image="x", command=[], args=[],
                                            env=[], workdir="", user="", hostname="h", labels={}))
            await ex.start(f"c{i}")
        await asyncio.sleep(0.05)
        failed = sum(1 for c in ex.list() if c.state == "stopped")
        assert 80 <= failed <= 160  # 30 % of 400, with room for chance
        await ex.close()

    asyncio.run(main())


def test_stop_before_start_and_unknown_containers():
    async def main() -> None:
        ex = SimulatedExecutor(SimBehaviour(start_delay=0), Counter())
        with pytest.raises(errors.NotFound):
            await ex.stop("nope")
        await ex.create(ContainerConfig(id="c", name="", image="x", command=[], args=[], env=[],
                                        workdir="", user="", hostname="h", labels={}))
        await ex.stop("c")  # never started: nothing to stop, no error
        assert ex.inspect("c").state == "created"
        with pytest.raises(errors.FailedPrecondition, match="simulated node"):
            await ex.logs("c")
        with pytest.raises(errors.FailedPrecondition, match="simulated node"):
            ex.exec_process("c", ["sh"], tty=False)
        await ex.remove("c")
        assert ex.list() == []

    asyncio.run(main())


def test_behaviour_checks():
    with pytest.raises(ValueError, match="fail_rate"):
        SimBehaviour(fail_rate=1.5)
    with pytest.raises(ValueError, match="start_delay"):
        SimBehaviour(start_delay=-1)
    with pytest.raises(ValueError, match="exit_code"):
        SimBehaviour(exit_code=0)


def test_simulated_nodes_arguments(tmp_path: Path):
    from common.pki import RootCA
    token = tokens.new_token(RootCA.generate("c1").cert_pem)
    with pytest.raises(errors.InvalidArgument, match="count"):
        SimulatedNodes(0, "10.0.0.1", token, tmp_path)
    with pytest.raises(errors.InvalidArgument, match="name_prefix"):
        SimulatedNodes(1, "10.0.0.1", token, tmp_path, name_prefix="a b")
    with pytest.raises(errors.InvalidArgument, match="fail_rate"):
        SimulatedNodes(1, "10.0.0.1", token, tmp_path, fail_rate=2)
    with pytest.raises(errors.InvalidArgument, match="manager"):
        SimulatedNodes(1, "manager1", token, tmp_path)
    with pytest.raises(errors.ShoalError, match="join token"):
        SimulatedNodes(1, "10.0.0.1", "SHLTKN-nope", tmp_path)
    nodes = SimulatedNodes(3, "10.0.0.1", token, tmp_path, name_prefix="simB")
    assert [n.hostname for n in nodes.nodes] == ["simB-00000", "simB-00001", "simB-00002"]
    assert parse_manager("10.0.0.1") == "10.0.0.1:2377"
    assert nodes.task_runs() == {}


def test_cli_names_the_flag():
    from click.testing import CliRunner
    from shoal.cli import main
    res = CliRunner().invoke(main, ["sim", "nodes", "--count", "2", "--manager", "nohost",
                                    "--token", "x"])
    assert res.exit_code == 2 and "--manager" in res.output
    res = CliRunner().invoke(main, ["sim", "nodes", "--count", "2", "--manager", "10.0.0.1",
                                    "--token", "x"])
    assert res.exit_code == 2 and "--token" in res.output
    res = CliRunner().invoke(main, ["sim", "--help"])
    assert "Simulated nodes for measuring managers" in res.output
