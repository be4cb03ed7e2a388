"""A shoal Node as Docker's swarm.Node."""
from __future__ import annotations

from common.model import NODE_ROLE_MANAGER, Node
from shoal.dockerapi.translate.values import drop_empty, meta


def node(n: Node, reachability: dict[str, str]) -> dict:
    """`reachability`: raft address -> leader | reachable | unreachable (Manager.reachability)."""
    d = n.description
    out = {
        **meta(n),
        "Spec": {"Labels": dict(n.spec.labels), "Role": n.spec.desired_role,
                 "Availability": n.spec.availability},
        "Description": {
            "Hostname": d.hostname,
            "Platform": {"Architecture": d.platform.architecture, "OS": d.platform.os},
            "Resources": {"NanoCPUs": d.resources.nano_cpus,
                          "MemoryBytes": d.resources.memory_bytes},
            "Engine": {"EngineVersion": d.engine_version},
        },
        "Status": drop_empty({"State": n.status.state, "Message": n.status.message,
                              "Addr": n.status.addr}),
    }
    ms = n.manager_status
    if n.role == NODE_ROLE_MANAGER and ms is not None:
        reach = reachability.get(ms.raft_addr, "unreachable")
        # Docker's Reachability has no "leader": the leader is reachable, and Leader says so.
        out["ManagerStatus"] = {
            "Leader": reach == "leader",
            "Reachability": "reachable" if reach == "leader" else reach,
            "Addr": ms.api_addr,
        }
    return out
