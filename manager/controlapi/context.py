"""What every control API handler reaches through its request: the manager, the caller's identity."""
from __future__ import annotations

import asyncio
from typing import Any, Optional, Protocol

from aiohttp import web

from common import errors, pki
from common.httpclient import ApiClient
from common.httpserver import CTX
from common.model import Cluster, Node
from common.nodestate import NodeState
from manager.allocator.allocator import Allocator
from manager.dispatcher.dispatcher import Dispatcher
from manager.state.raft.node import RaftNode
from manager.state.store import Store, Transaction, TxnResult


class Manager(Protocol):
    """What the control API uses of a manager (manager/manager.py wires the real one)."""
    store: Store
    raft: Optional[RaftNode]
    allocator: Allocator
    dispatcher: Dispatcher
    disk_guard: Any
    membership_lock: asyncio.Lock
    files: Any
    node_id: str
    is_leader: bool

    async def propose(self, txn: Transaction, timeout: float = 1.5) -> TxnResult: ...

    def require_leader(self) -> None: ...

    def cluster(self) -> Optional[Cluster]: ...

    def manager_nodes(self) -> list[Node]: ...

    def manager_api_addrs(self) -> list[str]: ...

    def leader_api_addr(self) -> Optional[str]: ...

    def leader_connected(self) -> bool: ...

    def reachability(self) -> dict[str, str]: ...

    def no_leader_reason(self) -> str: ...

    def leader_unreachable_reason(self) -> str: ...

    def watch(self, accept=None) -> asyncio.Queue: ...

    def unwatch(self, queue: asyncio.Queue) -> None: ...


class ApiContext(Protocol):
    manager: Optional[Manager]
    state: NodeState

    def peer_client(self, addr: str) -> ApiClient: ...


def context_of(request: web.Request) -> ApiContext:
    return request.app[CTX]


def manager_of(request: web.Request) -> Manager:
    ctx = context_of(request)
    if ctx.manager is None:
        if not ctx.state.in_swarm:
            raise errors.NotInSwarm("this node is not part of a swarm: run 'shoal swarm init' to "
                                    "create one or 'shoal swarm join' to join one")
        raise errors.NotAManager("this node is not a swarm manager: run the command on a manager "
                                 "node, or promote this node with 'shoal node promote' on a manager")
    return ctx.manager


# Set by auth_middleware from the caller's certificate (None on the local socket).
IDENTITY: web.RequestKey[pki.NodeIdentity] = web.RequestKey("shoal.identity", pki.NodeIdentity)
# A manager forwarded a request it received on its local socket (no node behind it).
FORWARDED_LOCAL: web.RequestKey[bool] = web.RequestKey("shoal.forwarded_local", bool)


def identity_of(request: web.Request) -> Optional[pki.NodeIdentity]:
    return request.get(IDENTITY)


def caller_node_id(request: web.Request, what: str) -> str:
    """The node calling, by its certificate; `what` names the request for the refusal."""
    ident = identity_of(request)
    if ident is None:
        raise errors.Unauthorized(f"{what} need the node's certificate")
    return ident.node_id
