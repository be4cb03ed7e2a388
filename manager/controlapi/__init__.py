"""The control API of a manager (aiohttp): one module per resource, and the middlewares.

`routes()` is what a manager serves to users (the local socket, and remote managers' clients on
2377); `node_routes()` adds what only nodes call on 2377 (their standalone containers).
"""
from __future__ import annotations

from aiohttp import web

from manager.controlapi import (autolock, ca, clientcerts, containers, data_objects, dispatcher, join,
                                networks, nodes, services, swarm, tasks)


def routes() -> list[web.RouteDef]:
    return (swarm.routes() + nodes.routes() + join.routes() + dispatcher.routes()
            + autolock.routes() + services.routes() + tasks.routes() + data_objects.routes()
            + networks.routes() + clientcerts.routes() + ca.routes())


def node_routes() -> list[web.RouteDef]:
    return containers.routes()
