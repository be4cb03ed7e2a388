"""Why a task's overlay interface is a macvlan of the VXLAN device, not a veth on a bridge.

One TCP stream between two namespace "hosts" (joined through a bridge in a switch namespace, as
in the lab) over five paths, measured in the same run, interleaved:

  underlay          host to host
  bare VXLAN        a VXLAN device in each host, nothing else: what the kernel's VXLAN costs
  shoal 0.1         the overlay as shoal 0.1 built it (Docker's layout): a bridge in the
                    network's namespace, a veth per task into it, and the node's NAT table in
                    the task (chains on prerouting, output and postrouting)
  macvlan, 0.1 table
                    today's interfaces with shoal 0.1's task table: the interfaces' share
  shoal             today's overlay: OverlayNetwork's macvlan of vxlan0, and lb.TaskNftables
                    (the output chain only)

Both task tables hold one VIP and the resolver redirect, as a task on a network has, and make
conntrack follow every packet of the task. The bridge variant is built by the real
OverlayNetwork too, in the older layout it still serves. Each
figure is the median of the rounds; ratios are to the underlay and to shoal 0.1.

Run as root: .venv/bin/python bench/overlay_layout_bench.py [--rounds 15] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import Results, add_json_option  # noqa: E402
from worker.network import nsutil  # noqa: E402
from worker.network.lb import Backend, Frontend, TaskNftables  # noqa: E402
from worker.network.overlay import OverlayNetwork, Peer  # noqa: E402

LOAD = str(ROOT / "bench" / "_netload.py")
PORT = 5201
SUBNET = "10.10.{}.0/24"
VIP = "10.10.{}.200"

# The task table shoal 0.1 installed (lb.render_nftables of that version, with the resolver
# redirect): three NAT hooks.
OLD_TABLE = """table ip shoal {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain output {{ type nat hook output priority -100; policy accept; ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:35353; jump services; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; ct mark 0x5301 masquerade; }}
  chain services {{
    ip daddr {vip} meta l4proto {{ tcp, udp }} dnat to numgen inc mod 1 map {{ 0 : {backend} }}
  }}
}}
"""


def sh(ns: str, *argv: str) -> None:
    r = nsutil.run(ns, list(argv))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {r.stderr.strip()}")


def build(tmp: Path, nets: list[OverlayNetwork]) -> dict[str, tuple[str, str, str]]:
    """Namespaces for every path (the overlays are added to ``nets`` as they are made);
    returns name -> (sender ns, receiver ns, receiver address)."""
    switch = str(tmp / "hosts" / "switch")
    hosts = {i: str(tmp / "hosts" / f"host{i}") for i in (1, 2)}
    for p in (switch, *hosts.values()):
        nsutil.create(p)
    sh(switch, "ip", "link", "add", "br0", "type", "bridge")
    sh(switch, "ip", "link", "set", "br0", "up")
    for i, h in hosts.items():
        nsutil.veth(h, "eth0", switch, f"v{i}")
        sh(switch, "ip", "link", "set", f"v{i}", "master", "br0", "up")
        sh(h, "ip", "addr", "add", f"192.168.250.{i}/24", "dev", "eth0")
        sh(h, "ip", "link", "set", "eth0", "up")
        sh(h, "ip", "link", "add", "bvx", "type", "vxlan", "id", "9999", "local",
           f"192.168.250.{i}", "dstport", "4790", "nolearning")
        sh(h, "ip", "link", "set", "bvx", "address", f"02:00:00:00:99:0{i}", "mtu", "1450", "up")
        sh(h, "ip", "addr", "add", f"10.99.0.{i}/24", "dev", "bvx")
    for i in (1, 2):
        peer = 3 - i
        sh(hosts[i], "bridge", "fdb", "add", f"02:00:00:00:99:0{peer}", "dev", "bvx",
           "dst", f"192.168.250.{peer}")
        sh(hosts[i], "ip", "neigh", "add", f"10.99.0.{peer}", "lladdr", f"02:00:00:00:99:0{peer}",
           "dev", "bvx", "nud", "permanent")
    paths = {"underlay": (hosts[1], hosts[2], "192.168.250.2"),
             "bare VXLAN": (hosts[1], hosts[2], "10.99.0.2")}
    for k, (name, layout, table) in enumerate((("shoal 0.1", "bridge", "old"),
                                               ("macvlan, 0.1 table", "macvlan", "old"),
                                               ("shoal", "macvlan", "new"))):
        subnet = SUBNET.format(k)
        task_ns, peers = {}, []
        for i in (1, 2):
            net = OverlayNetwork(f"olb{i}", 4100 + k, subnet, f"192.168.250.{i}",
                                 netns_dir=str(tmp / f"node{i}"), node_netns=hosts[i])
            nets.append(net)
            net.ensure()
            if layout == "bridge":      # what shoal 0.1 left: OverlayNetwork keeps serving it
                sh(net.netns_path, "ip", "link", "add", "br0", "type", "bridge")
                sh(net.netns_path, "ip", "link", "set", "br0", "mtu", "1450", "up")
                sh(net.netns_path, "ip", "link", "set", "vxlan0", "master", "br0")
            mac = f"02:42:0a:0a:{k:02x}:0{i}"
            ip = subnet.replace(".0/24", f".{i}")
            task_ns[i] = net.attach(f"t{k}-{i}", f"{ip}/24", mac)
            peers.append(Peer(mac, ip, f"192.168.250.{i}"))
        for net in nets[-2:]:
            net.set_peers(peers)
        backend = subnet.replace(".0/24", ".2")
        for i in (1, 2):
            if table == "old":
                r = nsutil.run(task_ns[i], ["nft", "-f", "-"],
                               input=OLD_TABLE.format(vip=VIP.format(k), backend=backend))
                if r.returncode != 0:
                    raise RuntimeError(r.stderr)
            else:
                TaskNftables(task_ns[i], redirects=(("127.0.0.11", 53, 35353),)).replace_all(
                    {Frontend("tcp", VIP.format(k), 0): [Backend(backend, 0)]})
        paths[name] = (task_ns[1], task_ns[2], backend)
    return paths


def blast(src: str, dst: str, addr: str, seconds: float) -> float:
    receiver = subprocess.Popen(nsutil.nsenter_argv(dst, [sys.executable, LOAD, "recv", str(PORT)]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "listening":
            raise RuntimeError(f"receiver did not start: {receiver.stderr.read()}")
        sender = subprocess.run(nsutil.nsenter_argv(src, [sys.executable, LOAD, "send", addr,
                                                          str(PORT), str(seconds)]),
                                capture_output=True, text=True, timeout=seconds + 60)
        if sender.returncode != 0:
            raise RuntimeError(f"sender to {addr}: {sender.stderr.strip()}")
        got = json.loads(receiver.communicate(timeout=30)[0].strip().splitlines()[-1])
        return got["bytes"] * 8 / got["seconds"] / 1e9
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=2.0)
    add_json_option(parser, "overlay_layout_bench")
    args = parser.parse_args()
    results = Results("overlay_layout_bench", args={"rounds": args.rounds, "seconds": args.seconds})
    with tempfile.TemporaryDirectory(prefix="shoal-olb-") as tmpdir:
        tmp = Path(tmpdir)
        nets: list[OverlayNetwork] = []
        try:
            paths = build(tmp, nets)
            for name, path in paths.items():
                blast(*path, 0.2)           # every path answers before measuring
            got: dict[str, list[float]] = {name: [] for name in paths}
            names = list(paths)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in (order if r % 2 == 0 else order[::-1]):
                    got[name].append(blast(*paths[name], args.seconds))
        finally:
            for net in nets:
                net.remove()
            hosts = tmp / "hosts"
            for entry in (os.listdir(hosts) if hosts.is_dir() else []):
                nsutil.remove(str(hosts / entry))
            nsutil.release_dir(str(hosts))
    med = {name: statistics.median(v) for name, v in got.items()}
    print(f"one TCP stream, {args.rounds} interleaved rounds of {args.seconds:g} s; "
          "median (min–max) Gbit/s")
    for name, vals in got.items():
        print(f"  {name:<18} {med[name]:6.2f} ({min(vals):.2f}–{max(vals):.2f})   "
              f"/underlay {med[name] / med['underlay']:.2f}   /shoal 0.1 "
              f"{med[name] / med['shoal 0.1']:.2f}")
        results.add(f"{name} Gbit/s", vals, "Gbit/s", "higher")
        if name != "underlay":
            # Paired round by round: the underlay's own swings cancel out of the ratio.
            results.add(f"{name} / underlay", [v / u for v, u in zip(vals, got["underlay"])],
                        "ratio", "higher")
    results.write(args.json)


if __name__ == "__main__":
    main()
