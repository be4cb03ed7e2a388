"""A shoal Node as Docker's swarm.Node, and Docker's NodeSpec as shoal's node change."""
from __future__ import annotations

from typing import Optional

from common.model import NODE_ROLE_MANAGER, Node
from shoal.dockerapi.translate.reader import Obj, bad
from shoal.dockerapi.translate.values import drop_empty, meta


def node(n: Node, reachability: dict[str, str], tls_info: Optional[dict] = None) -> dict:
    """`reachability`: raft address -> leader | reachable | unreachable (Manager.reachability);
    `tls_info`: Docker's TLSInfo of the node (translate/tls.py)."""
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
            "TLSInfo": tls_info or {"TrustRoot": "", "CertIssuerSubject": "",
                                    "CertIssuerPublicKey": ""},
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


def node_spec_change(body: dict) -> dict:
    """Docker's NodeSpec (the whole new spec, as the docker CLI sends it after reading the node)
    as shoal's node change: labels replaced, role and availability named."""
    o = Obj(body)
    name = o.str("Name")
    if name:
        raise bad("Name", "shoal names a node by its hostname and has no other name for it; "
                          "leave Name out (use Labels to tag the node)")
    labels = o.str_map("Labels")
    change = {"labels": labels}
    # Required, as dockerd's conversion of the spec requires them; the values themselves are
    # checked by the control API (manager/controlapi/nodes.update_node).
    for key, shoal_key, example in (("Role", "role", "worker"),
                                    ("Availability", "availability", "active")):
        value = o.str(key)
        if not value:
            raise bad(key, f"is required (the node's whole spec is sent, e.g. "
                           f"\"{key}\": \"{example}\")")
        change[shoal_key] = value
    o.done()
    return change


def node_path(path: str) -> str:
    """shoal's field of a node change (`labels`, `spec.role`) in Docker's spelling."""
    last = path.removeprefix("spec.")
    head, _, rest = last.partition(".")
    word = {"labels": "Labels", "role": "Role", "availability": "Availability"}.get(head, head)
    return f"{word}.{rest}" if rest else word
