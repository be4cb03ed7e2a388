"""The dashboard's reads and writes, through this node's own local API (its Unix socket).

The local API is the one door the CLI uses too: reads come from this manager's replica, and
writes are checked by the control API and forwarded to the leader by its middleware (with a
definite answer across a failover). So the dashboard keeps no rules of its own: scaling here
is `shoal service scale`, a drain is `shoal node update --availability drain`.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator
from urllib.parse import quote

from common import errors
from common.httpclient import ApiClient, Endpoint

# A read-modify-write retried this often when someone else changed the object in between.
CONFLICT_RETRIES = 5
AVAILABILITIES = ("active", "pause", "drain")


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


class LocalSource:
    def __init__(self, socket_path: str) -> None:
        self.client = ApiClient(Endpoint(unix_path=socket_path))

    async def close(self) -> None:
        await self.client.close()

    async def read(self) -> dict[str, Any]:
        """nodes, services and tasks as the control API shows them, and /info's swarm part."""
        return {"nodes": await self.client.request("GET", "/nodes", timeout=10),
                "services": await self.client.request("GET", "/services", timeout=10),
                "tasks": await self.client.request("GET", "/tasks", timeout=10),
                "info": await self.client.request("GET", "/info", timeout=10)}

    async def scale(self, service: str, replicas: int) -> dict:
        if replicas < 0:
            raise errors.InvalidArgument("replicas must be 0 or more", field="replicas")
        for _ in range(CONFLICT_RETRIES):
            svc = await self.client.request("GET", _path("services", service))
            mode = svc["spec"]["mode"]["mode"]
            if mode != "replicated":
                raise errors.InvalidArgument(f"{svc['spec']['name']}: only replicated services "
                                             f"scale (this one is {mode})")
            svc["spec"]["mode"]["replicas"] = replicas
            try:
                return await self.client.request(
                    "POST", _path("services", svc["id"], "update"), {"spec": svc["spec"]},
                    params={"version": str(svc["meta"]["version"])})
            except errors.Conflict:
                continue
        raise errors.Conflict(f"service {service} kept changing while it was scaled; try again")

    async def rollback(self, service: str) -> dict:
        return await self.client.request("POST", _path("services", service, "rollback"))

    async def set_availability(self, node: str, availability: str) -> dict:
        if availability not in AVAILABILITIES:
            raise errors.InvalidArgument(f"availability must be one of {', '.join(AVAILABILITIES)}",
                                         field="availability")
        for _ in range(CONFLICT_RETRIES):
            current = await self.client.request("GET", _path("nodes", node))
            spec = {"labels": dict(current["spec"]["labels"]), "availability": availability,
                    "role": current["spec"]["desired_role"]}
            try:
                return await self.client.request(
                    "POST", _path("nodes", current["id"], "update"), {"spec": spec},
                    params={"version": str(current["meta"]["version"])})
            except errors.Conflict:
                continue
        raise errors.Conflict(f"node {node} kept changing while it was updated; try again")

    async def events(self) -> AsyncIterator[dict]:
        """The manager's cluster events as they happen (GET /events), until the stream ends."""
        return await self._ndjson("/events", {})

    async def logs(self, service: str, tail: int) -> AsyncIterator[dict]:
        """The service's log entries, followed (GET /services/{ref}/logs?follow=true). Opened
        before it returns, so an unknown service is an error here, not inside the stream."""
        params = {"follow": "true", "tail": str(tail)}
        return await self._ndjson(_path("services", service, "logs"), params)

    async def _ndjson(self, path: str, params: dict) -> AsyncIterator[dict]:
        resp = await self.client.open_stream("GET", path, params=params)

        async def records() -> AsyncIterator[dict]:
            try:
                async for raw in resp.content:
                    if raw.strip():
                        yield json.loads(raw)
            finally:
                resp.release()
        return records()
