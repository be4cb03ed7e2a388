"""The swarm's own spec (`swarm init` and `swarm update`): strictly decoded, then every setting
checked against the range the loops that read it can live with. A stored value that a loop
cannot use stops that loop on every manager, so nothing reaches the store unchecked."""
from __future__ import annotations

import ipaddress
import re

from common import errors, strict
from common.model import ClusterSpec

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
# A certificate's validity is written as a date; x509 dates end in 9999, and a node that must
# renew every minute is the shortest that still works.
MIN_CERT_EXPIRY = 60.0
MAX_CERT_EXPIRY = 100 * 365 * 86400.0
MAX_HISTORY = 10_000
MAX_POOLS = 64
MAX_KEEP_SNAPSHOTS = 100
# Docker's range for --data-path-port: above the well-known ports, below the ephemeral ones
# the kernel hands out (a tunnel port taken by some client's socket would silence the overlays).
DATA_PATH_PORTS = (1024, 49151)
_SPECIAL = tuple((ipaddress.IPv4Network(n), kind) for n, kind in (
    ("0.0.0.0/8", "'this network'"), ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"), ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved")))


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


def parse_cluster_spec(data: object) -> ClusterSpec:
    if not isinstance(data, dict):
        raise errors.InvalidArgument("spec: must be an object", field="spec")
    spec = strict.decode(ClusterSpec, data, "spec")
    validate_cluster_spec(spec)
    return spec


def validate_cluster_spec(spec: ClusterSpec) -> None:
    if not _NAME.match(spec.name):
        raise _bad("spec.name", f"invalid swarm name {spec.name!r}: use 1-63 letters, digits, "
                   "'_', '.' or '-'")
    if not all(spec.labels):
        raise _bad("spec.labels", "a label needs a non-empty key")
    strict.seconds(spec.dispatcher.heartbeat_period, "spec.dispatcher.heartbeat_period",
                   lo=0.1, hi=3600)
    strict.seconds(spec.ca_config.node_cert_expiry, "spec.ca_config.node_cert_expiry",
                   lo=MIN_CERT_EXPIRY, hi=MAX_CERT_EXPIRY)
    limit = spec.orchestration.task_history_retention_limit
    if not 0 <= limit <= MAX_HISTORY:
        raise _bad("spec.orchestration.task_history_retention_limit",
                   f"must be an integer between 0 and {MAX_HISTORY}")
    raft = spec.raft
    if not 1 <= raft.snapshot_interval <= 10**9:
        raise _bad("spec.raft.snapshot_interval", "must be an integer between 1 and 10^9")
    if not 0 <= raft.keep_old_snapshots <= MAX_KEEP_SNAPSHOTS:
        raise _bad("spec.raft.keep_old_snapshots",
                   f"must be an integer between 0 and {MAX_KEEP_SNAPSHOTS}")
    strict.seconds(raft.election_tick_min, "spec.raft.election_tick_min", lo=0.05, hi=60)
    strict.seconds(raft.election_tick_max, "spec.raft.election_tick_max", lo=0.05, hi=60)
    if raft.election_tick_min >= raft.election_tick_max:
        raise _bad("spec.raft.election_tick_max", "must be greater than election_tick_min")
    _validate_pools(spec.networking.default_addr_pools, spec.networking.subnet_size)


def check_data_path_port(port: int, where: str = "data_path_port") -> int:
    lo, hi = DATA_PATH_PORTS
    if isinstance(port, bool) or not isinstance(port, int) or not lo <= port <= hi:
        raise _bad(where, f"{port!r} is not a UDP port between {lo} and {hi}: pick one free on "
                   f"every node's underlay (the default is 4789, VXLAN's own)")
    return port


def _validate_pools(pools: list[str], subnet_size: int) -> None:
    where = "spec.networking.default_addr_pools"
    if not pools:
        raise _bad(where, "needs at least one pool (e.g. 10.0.0.0/8)")
    if len(pools) > MAX_POOLS:
        raise _bad(where, f"at most {MAX_POOLS} pools")
    if not 16 <= subnet_size <= 29:
        raise _bad("spec.networking.subnet_size", "must be a prefix length between 16 and 29 "
                   "(e.g. 24)")
    nets: list[ipaddress.IPv4Network] = []
    for i, text in enumerate(pools):
        net = overlay_subnet(text, f"{where}[{i}]")
        if net.prefixlen > subnet_size:
            raise _bad(f"{where}[{i}]", f"{net} is smaller than one /{subnet_size} subnet: use a "
                       f"pool of /{subnet_size} or larger, or a larger subnet_size")
        clash = next((n for n in nets if n.overlaps(net)), None)
        if clash is not None:
            raise _bad(f"{where}[{i}]", f"{net} overlaps the pool {clash}")
        nets.append(net)


def overlay_subnet(text: str, where: str) -> ipaddress.IPv4Network:
    """An IPv4 network an overlay can use: CIDR form, and not an address range the kernel gives
    another meaning (loopback, multicast, link-local, reserved, 0.0.0.0/8)."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise _bad(where, f"{text!r} is not an IPv4 network in CIDR form such as 10.1.2.0/24: "
                   f"{exc}") from None
    if "/" not in text:
        raise _bad(where, f"{text!r} needs a prefix length, such as 10.1.2.0/24")
    for special, kind in _SPECIAL:
        if net.overlaps(special):
            raise _bad(where, f"{net} overlaps {special}, the {kind} range: an overlay needs "
                       "ordinary unicast addresses (e.g. 10.0.0.0/8, 172.16.0.0/12, "
                       "192.168.0.0/16)")
    return net
