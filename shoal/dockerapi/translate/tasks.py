"""A shoal Task as Docker's swarm.Task, and the network objects its attachments carry."""
from __future__ import annotations

from typing import Callable, Optional

from common.model import Network, Task
from shoal.dockerapi.translate.services import port, task_spec
from shoal.dockerapi.translate.values import drop_empty, meta, rfc3339


def network(n: Network) -> dict:
    """The swarm network object as a task's attachment carries it."""
    ipam = [drop_empty({"Subnet": c.subnet, "Gateway": c.gateway}) for c in n.spec.ipam]
    return {
        **meta(n),
        "Spec": drop_empty({
            "Name": n.spec.name, "Labels": dict(n.spec.labels),
            "DriverConfiguration": {"Name": n.spec.driver},
            "Ingress": n.spec.ingress or None, "Attachable": n.spec.attachable or None,
            "IPAMOptions": drop_empty({"Driver": {"Name": "default"}, "Configs": ipam}),
            "Scope": "swarm"}),
        "DriverState": {"Name": n.spec.driver,
                        "Options": {"com.docker.network.driver.overlay.vxlanid_list": str(n.vni)}},
        "IPAMOptions": {"Driver": {"Name": "default"},
                        "Configs": [drop_empty({"Subnet": n.subnet, "Gateway": n.gateway})]},
    }


def task(t: Task, network_of: Callable[[str], Optional[Network]]) -> dict:
    """`network_of`: a network by id (None once it is gone: the attachment then names only
    the id)."""
    st = t.status
    status: dict = {"Timestamp": rfc3339(st.timestamp), "State": st.state,
                    "Message": st.message}
    if st.err:
        status["Err"] = st.err
    if st.container_id or st.exit_code is not None:
        status["ContainerStatus"] = drop_empty({"ContainerID": st.container_id,
                                                "ExitCode": st.exit_code})
    # Docker lists only host-mode ports here: ingress ports belong to the service's endpoint.
    status["PortStatus"] = drop_empty({"Ports": [port(p) for p in t.ports
                                                 if p.publish_mode == "host"]})
    out = {
        **meta(t),
        "Labels": {},
        "Spec": task_spec(t.spec),
        "ServiceID": t.service_id,
        "Slot": t.slot,
        "NodeID": t.node_id,
        "Status": status,
        "DesiredState": t.desired_state,
    }
    if not t.slot:
        del out["Slot"]
    if not t.node_id:
        del out["NodeID"]
    attachments = []
    for a in t.networks:
        net = network_of(a.network_id)
        attachments.append({"Network": network(net) if net is not None else {"ID": a.network_id},
                            "Addresses": [a.address] if a.address else []})
    if attachments:
        out["NetworksAttachments"] = attachments
    return out
