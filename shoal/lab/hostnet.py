"""The hosts' network: the underlay bridge, each host's namespace and veth, partition and heal."""
from __future__ import annotations

import subprocess

from shoal.lab.errors import LabError
from shoal.lab.naming import PREFIXLEN

# pyroute2 is imported inside the functions: every CLI command loads the lab's modules.


def create_underlay(underlay: str) -> None:
    """The namespace `underlay` with the bridge br0, the switch every host's veth plugs into."""
    from pyroute2 import IPRoute, netns
    netns.create(underlay)
    # the underlay is a plain switch: no IPv6 link-local addresses on br0 or its ports
    subprocess.run(["ip", "netns", "exec", underlay, "sh", "-c",
                    "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
                    "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"],
                   check=False, capture_output=True, timeout=10)
    with IPRoute(netns=underlay, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname="br0", kind="bridge")
        br = ipr.link_lookup(ifname="br0")[0]
        ipr.link("set", index=br, state="up")


def create_host_net(underlay: str, h: dict) -> None:
    """The host's namespace, its eth0 with its address, the peer on the underlay's br0."""
    from pyroute2 import IPRoute, netns
    ns = h["namespace"]
    netns.create(ns)
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="eth0", kind="veth",
                 peer={"ifname": h["peer"], "net_ns_fd": underlay})
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address=h["address"], prefixlen=PREFIXLEN)
        ipr.link("set", index=eth0, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    with IPRoute(netns=underlay, flags=0) as ipr:
        br = ipr.link_lookup(ifname="br0")[0]
        peer = ipr.link_lookup(ifname=h["peer"])[0]
        ipr.link("set", index=peer, master=br)
        ipr.link("set", index=peer, state="down" if h.get("partitioned") else "up")


def set_peer(lab: str, underlay: str, name: str, h: dict, up: bool) -> None:
    """Bring the host's underlay port up (heal) or down (partition); records it in `h`."""
    from pyroute2 import IPRoute
    try:
        with IPRoute(netns=underlay, flags=0) as ipr:
            idx = ipr.link_lookup(ifname=h["peer"])
            if not idx:
                raise LabError(f"{name}: its underlay port {h['peer']} is missing in "
                               f"{underlay}; recreate the lab (`shoal lab down "
                               f"--name {lab}` then `up`)")
            ipr.link("set", index=idx[0], state="up" if up else "down")
    except FileNotFoundError:
        raise LabError(f"the underlay namespace {underlay} is gone; recreate the "
                       f"lab (`shoal lab down --name {lab}` then `up`)") from None
    h["partitioned"] = not up
