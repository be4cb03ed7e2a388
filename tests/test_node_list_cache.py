"""`node ls` keeps each worker's JSON by (id, version): the answer must be exactly the one built
from scratch, after changes, removals and with managers (whose reachability is live)."""
import json

from common.model import ManagerStatus, Node, NodeDescription, NodeStatus
from common.httpserver import to_json_plain
from manager.controlapi.nodes import NodeListCache, node_view
from manager.state.store import Store, Transaction


class _Manager:
    """Fake: node_view asks a manager only for the managers' reachability."""

    def __init__(self) -> None:
        self.reach: dict[str, str] = {}

    def reachability(self) -> dict[str, str]:
        return self.reach


def _fresh(manager, nodes) -> list:
    return json.loads(json.dumps(to_json_plain([node_view(manager, n) for n in nodes])))


def test_the_cached_list_is_the_list_built_from_scratch():
    store, manager, cache = Store(), _Manager(), NodeListCache()
    txn = Transaction()
    for i in range(5):
        txn.create("nodes", Node(id=f"w{i}", status=NodeStatus(state="ready", addr=f"10.0.0.{i}"),
                                 description=NodeDescription(hostname=f"w{i}")))
    txn.create("nodes", Node(id="m1", role="manager",
                             manager_status=ManagerStatus(raft_addr="10.0.1.1:4242"),
                             description=NodeDescription(hostname="m1")))
    store.apply(txn.encode())

    def check():
        nodes = sorted(store.list("nodes"), key=lambda n: n.id)
        assert json.loads(cache.render(manager, nodes)) == _fresh(manager, nodes)

    check()
    check()                                   # from the cache
    node = store.get("nodes", "w2")
    node.status.state, node.status.message = "down", "heartbeat failure"
    store.apply(Transaction().update("nodes", node).encode())
    check()                                   # the changed node is built again
    assert json.loads(cache.render(manager, store.list("nodes")))[2]["status"]["state"] == "down"
    manager.reach = {"10.0.1.1:4242": "leader"}
    check()                                   # a manager's view is never kept
    store.apply(Transaction().delete("nodes", "w0").encode())
    check()
    assert "w0" not in cache._json
