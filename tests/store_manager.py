"""A manager without raft, for tests of validation and API handlers that need no replication: its
transactions apply straight to a real Store (raft itself is proven by tests/test_raft.py, and
tests.raft_harness runs the managers' loops on a real one-member raft)."""
from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common import errors
from common.httpserver import CTX, error_middleware
from manager.state.store import Store


class StoreManager:
    def __init__(self) -> None:
        self.store = Store()
        self.is_leader = True

    async def propose(self, txn, timeout=None):
        result = self.store.apply(txn.encode())
        if not result["ok"]:
            raise errors.Conflict(result["message"])
        return result

    def commit(self, txn) -> None:
        assert self.store.apply(txn.encode())["ok"]


class Ctx:
    """What the API handlers reach through their app: the manager."""

    def __init__(self, manager) -> None:
        self.manager = manager


async def api_client(manager, routes: list[web.RouteDef]) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    app[CTX] = Ctx(manager)
    app.add_routes(routes)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client
