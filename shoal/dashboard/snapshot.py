"""What the page renders: one JSON snapshot of nodes, services and tasks, built from the
control API's own views (pure functions, so the shape is tested without a cluster), and the
history behind the chart (running tasks, raft commit rate)."""
from __future__ import annotations

from collections import deque
from typing import Any, Optional

# Tasks shown: those meant to run, and those still running while being stopped.
_STOPPED_DESIRES = ("shutdown", "remove", "complete")
# Enough tasks for a large lab; the page is a view, not an inventory.
MAX_TASKS = 1000
# The chart's span: one point a second.
HISTORY_POINTS = 300


def split_image(ref: str) -> tuple[str, str]:
    """("busybox:1", "sha256:...") of a pinned reference; the digest is "" when unpinned."""
    name, sep, digest = ref.partition("@")
    return (name, digest) if sep else (ref, "")


def _ports(svc: dict) -> list[str]:
    ports = (svc.get("endpoint") or {}).get("ports") or \
        svc["spec"].get("endpoint_spec", {}).get("ports") or []
    return [f"{p.get('published_port') or '*'}:{p['target_port']}/{p.get('protocol', 'tcp')}"
            + ("" if p.get("publish_mode", "ingress") == "ingress" else " (host)")
            for p in ports]


def node_row(node: dict, running: int) -> dict:
    ms = node.get("manager_status") or {}
    res = (node.get("description") or {}).get("resources") or {}
    return {"id": node["id"], "hostname": node["description"]["hostname"],
            "role": node["role"], "status": node["status"]["state"],
            "availability": node["spec"]["availability"], "addr": node["status"].get("addr", ""),
            "leader": bool(ms.get("leader")), "reachability": ms.get("reachability", ""),
            "cpus": res.get("nano_cpus", 0) / 1e9, "memory_bytes": res.get("memory_bytes", 0),
            "engine_version": node["description"].get("engine_version", ""),
            "tasks_running": running}


def service_row(svc: dict) -> dict:
    image, digest = split_image(svc["spec"]["task_template"]["container"]["image"])
    rs = svc.get("replicas_status") or {}
    us = svc.get("update_status") or {}
    return {"id": svc["id"], "name": svc["spec"]["name"], "mode": svc["spec"]["mode"]["mode"],
            "replicas_desired": rs.get("desired", 0), "replicas_running": rs.get("running", 0),
            "image": image, "digest": digest, "ports": _ports(svc),
            "update": {"state": us.get("state", ""), "message": us.get("message", "")},
            "can_rollback": svc.get("previous_spec") is not None}


def task_row(task: dict) -> dict:
    st = task["status"]
    return {"id": task["id"], "name": task["name"], "service": task.get("service_name", ""),
            "service_id": task.get("service_id", ""), "node_id": task.get("node_id", ""),
            "node": task.get("node_hostname", ""), "slot": task.get("slot", 0),
            "state": st["state"], "desired_state": task["desired_state"],
            "message": st.get("message", ""), "error": st.get("err", ""),
            "since": st.get("timestamp", 0.0)}


def _shown(task: dict) -> bool:
    return task["desired_state"] not in _STOPPED_DESIRES or task["status"]["state"] == "running"


def build(read: dict[str, Any], history: list[dict], now: float,
          error: Optional[str] = None) -> dict:
    """The snapshot of one read of source.LocalSource.read()."""
    tasks = [t for t in read.get("tasks", []) if _shown(t)][:MAX_TASKS]
    running_on: dict[str, int] = {}
    for t in tasks:
        if t["status"]["state"] == "running":
            running_on[t.get("node_id", "")] = running_on.get(t.get("node_id", ""), 0) + 1
    swarm = (read.get("info") or {}).get("swarm") or {}
    raft = swarm.get("raft") or {}
    return {
        "time": now,
        "error": error,
        "manager": {"hostname": (read.get("info") or {}).get("hostname", ""),
                    "node_id": swarm.get("node_id", ""), "is_leader": bool(swarm.get("leader")),
                    "term": raft.get("term", 0), "commit_index": raft.get("commit_index", 0)},
        "nodes": [node_row(n, running_on.get(n["id"], 0)) for n in read.get("nodes", [])],
        "services": sorted((service_row(s) for s in read.get("services", [])),
                           key=lambda s: s["name"]),
        "tasks": sorted((task_row(t) for t in tasks),
                        key=lambda t: (t["node"], t["service"], t["slot"], t["name"])),
        "history": history,
    }


def running_tasks(read: dict[str, Any]) -> int:
    return sum(1 for t in read.get("tasks", []) if t["status"]["state"] == "running")


class History:
    """One chart point a read: tasks running, and commits a second since the last read (the
    raft commit index's growth over the time between two reads)."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self._points: deque[dict] = deque(maxlen=points)
        self._last: Optional[tuple[float, int]] = None

    def add(self, now: float, running: int, commit_index: int) -> None:
        rate = 0.0
        if self._last is not None and now > self._last[0] and commit_index >= self._last[1]:
            rate = (commit_index - self._last[1]) / (now - self._last[0])
        self._last = (now, commit_index)
        self._points.append({"t": round(now, 3), "running": running,
                             "commit_rate": round(rate, 2)})

    def points(self) -> list[dict]:
        return list(self._points)
