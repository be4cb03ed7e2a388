"""Endpoints of the local Unix socket that concern this node itself."""
from __future__ import annotations

from aiohttp import web

from common.model import NODE_ROLE_MANAGER
from manager.controlapi.middleware import local_only
from common.httpserver import CTX, body_json, field, query_flag, reply
from shoal import API_VERSION, __version__, lifecycle
from shoal import resolveapi
from shoal import buildapi
from shoal import eventsapi  # `shoal events`: the manager's cluster events as NDJSON
from shoal import imageapi  # image load|push|tag|...|save, system df|prune
from shoal import containercmds  # container top|stats|kill
from shoal.dashboard import api as dashboardapi  # POST /dashboard: `shoal dashboard`


def _daemon(request: web.Request):
    return request.app[CTX]


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def info(request: web.Request) -> web.Response:
    d = _daemon(request)
    st = d.state
    swarm: dict = {"state": ("locked" if d.locked else "active") if st.in_swarm else "inactive"}
    if st.in_swarm:
        swarm.update(node_id=st.node_id, cluster_id=st.cluster_id, role=st.role,
                     is_manager=st.role == NODE_ROLE_MANAGER, node_addr=st.advertise_addr,
                     remote_managers=st.managers,
                     connected=bool(d.agent and d.agent.connected.is_set()))
        m = d.manager
        if m is not None and m.raft is not None:
            swarm.update(managers=len(m.manager_nodes()), nodes=m.store.count("nodes"),
                         leader=m.is_leader, leader_addr=m.leader_api_addr(),
                         raft={"term": m.raft.term, "commit_index": m.raft.commit_index,
                               "applied_index": m.raft.applied_index,
                               "members": [{"addr": x.addr, "connected": x.connected}
                                           for x in m.raft.members()]})
            swarm["leader_loops"] = m.leader_loops_view()
            cluster = m.cluster()
            if cluster:
                swarm["heartbeat_period"] = cluster.spec.dispatcher.heartbeat_period
    return reply({"hostname": d.hostname, "version": __version__, "api_version": API_VERSION,
                  "data_root": str(d.files.root), "swarm": swarm})


@local_only
async def swarm_init(request: web.Request) -> web.Response:
    data = await body_json(request, required=False)
    result = await lifecycle.init_swarm(
        _daemon(request), field(data, "advertise_addr", str, required=False),
        field(data, "listen_addr", str, required=False), field(data, "spec", dict, required=False),
        field(data, "data_path_port", int, required=False))
    return reply(result)


@local_only
async def swarm_join(request: web.Request) -> web.Response:
    data = await body_json(request)
    result = await lifecycle.join_swarm(
        _daemon(request), field(data, "remote_addr", str), field(data, "token", str),
        field(data, "advertise_addr", str, required=False),
        field(data, "listen_addr", str, required=False))
    return reply(result)


@local_only
async def swarm_leave(request: web.Request) -> web.Response:
    return reply(await lifecycle.leave_swarm(_daemon(request), query_flag(request, "force")))


def routes() -> list[web.RouteDef]:
    return [web.get("/_ping", ping), web.get("/info", info), web.post("/swarm/init", swarm_init),
            web.post("/swarm/join", swarm_join), web.post("/swarm/leave", swarm_leave),
            *imageapi.routes(), *containercmds.routes(),
            *resolveapi.routes(), *buildapi.routes(), *eventsapi.routes(),
            *dashboardapi.routes()]
