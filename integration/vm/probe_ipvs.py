"""Run inside a VM lab guest: drive shoal's IpvsBackend against the guest's real kernel.

Two backends live in guest-local network namespaces behind veth pairs, each serving its own
name with busybox httpd. The IPVS backend publishes them on a port (a fwmark service, as the
routing mesh uses); the host then checks `ipvsadm -Ln` and sends traffic from the other guests.

    python3 probe_ipvs.py up PORT      # prints the fwmark as JSON
    python3 probe_ipvs.py remove PORT
    python3 probe_ipvs.py down
"""
from __future__ import annotations

import json
import subprocess
import sys

from worker.network.lb import Backend, Frontend, IpvsBackend, fwmark_for, pick_backend

BACKENDS = {"b1": ("10.99.1.1", "10.99.1.2"), "b2": ("10.99.2.1", "10.99.2.2")}


def sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True)


def up(port: int) -> dict:
    sh("sysctl -qw net.ipv4.ip_forward=1")
    for name, (gw, ip) in BACKENDS.items():
        sh(f"ip netns add {name} && ip link add v{name} type veth peer name eth0 netns {name}"
           f" && ip addr add {gw}/24 dev v{name} && ip link set v{name} up"
           f" && ip -n {name} addr add {ip}/24 dev eth0 && ip -n {name} link set eth0 up"
           f" && ip -n {name} link set lo up && ip -n {name} route add default via {gw}"
           f" && mkdir -p /tmp/www-{name} && echo {name} > /tmp/www-{name}/index.html")
        subprocess.Popen(["ip", "netns", "exec", name, "busybox", "httpd", "-f", "-p", "80",
                          "-h", f"/tmp/www-{name}"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)   # else the caller waits for its pipes
    lb = IpvsBackend()
    fe = Frontend("tcp", None, port)
    lb.ensure_service(fe, [Backend(ip, 80) for _, ip in BACKENDS.values()])
    return {"fwmark": fwmark_for(fe), "picked": pick_backend()}


def remove(port: int) -> None:
    lb = IpvsBackend()
    fe = Frontend("tcp", None, port)
    lb.frontends.add(fe)       # a fresh object: tell it what the earlier process installed
    lb.remove_service(fe)


def down() -> None:
    for name in BACKENDS:
        subprocess.run(["sh", "-c", f"ip netns pids {name} | xargs -r kill; "
                                    f"ip netns del {name}"], check=False)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "up":
        print(json.dumps(up(int(sys.argv[2]))))
    elif cmd == "remove":
        remove(int(sys.argv[2]))
    elif cmd == "down":
        down()
