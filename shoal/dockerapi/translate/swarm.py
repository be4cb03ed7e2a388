"""The cluster object as Docker's swarm.Swarm (and the ClusterInfo /info carries), and
Docker's SwarmSpec, SwarmInitRequest and SwarmJoinRequest read as shoal's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common import codec
from common.model import Cluster, ClusterSpec
from manager.specs.cluster import DATA_PATH_PORTS
from shoal.dockerapi.translate import tls
from shoal.dockerapi.translate.reader import Obj, bad
from shoal.dockerapi.translate.values import meta, nanos

def cluster_info(c: Cluster) -> dict:
    """What /info's Swarm.Cluster and /swarm share: never a join token, the CA key or the
    unlock key."""
    s = c.spec
    net = s.networking
    return {
        **meta(c),
        "Spec": {
            "Name": s.name,
            "Labels": dict(s.labels),
            "Orchestration": {"TaskHistoryRetentionLimit":
                              s.orchestration.task_history_retention_limit},
            # Docker counts raft timing in ticks; shoal's are timeouts in seconds, so only
            # the snapshot interval has a Docker spelling.
            "Raft": {"SnapshotInterval": s.raft.snapshot_interval,
                     "KeepOldSnapshots": s.raft.keep_old_snapshots},
            "Dispatcher": {"HeartbeatPeriod": nanos(s.dispatcher.heartbeat_period)},
            "CAConfig": {"NodeCertExpiry": nanos(s.ca_config.node_cert_expiry),
                         "ForceRotate": s.ca_config.force_rotate},
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": s.encryption_config.auto_lock_managers},
        },
        "TLSInfo": tls.cluster_tls(c),
        "RootRotationInProgress": tls.rotation_in_progress(c),
        "DefaultAddrPool": list(net.default_addr_pools),
        "SubnetSize": net.subnet_size,
        "DataPathPort": c.data_path_port,
    }


def swarm(c: Cluster) -> dict:
    """GET /swarm: the cluster with its join tokens, as dockerd gives them to a manager's
    (root-only) socket; `docker swarm join-token` reads them here."""
    return {**cluster_info(c), "JoinTokens": {"Worker": c.join_tokens.worker,
                                              "Manager": c.join_tokens.manager}}


# Docker's defaults for the raft tuning shoal keeps in seconds, not ticks: a client that
# sends them (or zero) asks for nothing shoal would have to honour.
_RAFT_DEFAULTS = {"LogEntriesForSlowFollowers": (500,), "ElectionTick": (10,),
                  "HeartbeatTick": (1,)}


def cluster_spec(body: Optional[dict], current: ClusterSpec, path: str = "") -> dict:
    """Docker's SwarmSpec as shoal's spec (plain, for the control API to check). Docker's
    update sends the whole spec read before; a zero (or absent) duration, count or name keeps
    what `current` has, as dockerd's defaults do. Labels are replaced."""
    o = Obj(body, path)
    out = codec.to_plain(current)
    name = o.str("Name")
    if name:
        out["name"] = name
    if o.has("Labels"):
        out["labels"] = o.str_map("Labels")
    else:
        o.take("Labels")
        out["labels"] = {}
    orch = o.obj("Orchestration")
    if orch is not None:
        if orch.has("TaskHistoryRetentionLimit"):
            out["orchestration"]["task_history_retention_limit"] = \
                orch.int("TaskHistoryRetentionLimit", lo=-(1 << 63))
        orch.take("TaskHistoryRetentionLimit")
        orch.done()
    raft = o.obj("Raft")
    if raft is not None:
        interval = raft.int("SnapshotInterval")
        if interval:
            out["raft"]["snapshot_interval"] = interval
        if raft.has("KeepOldSnapshots"):
            out["raft"]["keep_old_snapshots"] = raft.int("KeepOldSnapshots", lo=-(1 << 63))
        raft.take("KeepOldSnapshots")
        for key, allowed in _RAFT_DEFAULTS.items():
            _refuse_int(raft, key, "shoal's raft timing is set in seconds, not in ticks",
                        allowed)
        raft.done()
    disp = o.obj("Dispatcher")
    if disp is not None:
        period = disp.int("HeartbeatPeriod")
        if period:
            out["dispatcher"]["heartbeat_period"] = period / 1e9
        disp.done()
    ca = o.obj("CAConfig")
    if ca is not None:
        expiry = ca.int("NodeCertExpiry")
        if expiry:
            out["ca_config"]["node_cert_expiry"] = expiry / 1e9
        ca.refuse("ExternalCAs", "shoal's managers sign certificates with the swarm's own CA")
        ca.refuse("SigningCACert", "the swarm's root CA cannot be replaced")
        ca.refuse("SigningCAKey", "the swarm's root CA cannot be replaced")
        if ca.has("ForceRotate"):  # `docker swarm ca --rotate` sends it one higher
            out["ca_config"]["force_rotate"] = ca.int("ForceRotate")
        ca.take("ForceRotate")
        ca.done()
    enc = o.obj("EncryptionConfig")
    if enc is not None:
        out["encryption_config"]["auto_lock_managers"] = enc.bool("AutoLockManagers")
        enc.done()
    defaults = o.obj("TaskDefaults")
    if defaults is not None:
        driver = defaults.obj("LogDriver")
        if driver is not None:
            if driver.str("Name") or driver.str_map("Options"):
                raise bad(driver.path, "shoal does not support this field (tasks log with "
                                       "shoal's json-file driver unless a service names another)")
            driver.done()
        defaults.done()
    o.done()
    return out


def _refuse_int(o: Obj, key: str, why: str, allowed: tuple = ()) -> None:
    """An integer field shoal cannot honour: fine absent, zero or one of `allowed`."""
    value = o.int(key)
    if value and value not in allowed:
        raise bad(o.at(key), f"shoal does not support this field ({why})")


_WORDS = {"spec": "Spec", "name": "Name", "labels": "Labels", "orchestration": "Orchestration",
          "task_history_retention_limit": "TaskHistoryRetentionLimit", "raft": "Raft",
          "snapshot_interval": "SnapshotInterval", "keep_old_snapshots": "KeepOldSnapshots",
          "data_path_port": "DataPathPort", "dispatcher": "Dispatcher",
          "heartbeat_period": "HeartbeatPeriod", "ca_config": "CAConfig",
          "node_cert_expiry": "NodeCertExpiry", "force_rotate": "ForceRotate", "encryption_config": "EncryptionConfig",
          "auto_lock_managers": "AutoLockManagers", "default_addr_pools": "DefaultAddrPool",
          "subnet_size": "SubnetSize", "advertise_addr": "AdvertiseAddr",
          "listen_addr": "ListenAddr", "remote_addr": "RemoteAddrs", "token": "JoinToken",
          "rotate_manager_unlock_key": "rotateManagerUnlockKey"}


def _word(part: str) -> str:
    word, bracket, index = part.partition("[")
    return _WORDS.get(word, word) + bracket + index


def init_path(path: str) -> str:
    """shoal's field of `swarm init` (`spec.dispatcher.heartbeat_period`, `advertise_addr`) in
    the spelling of Docker's SwarmInitRequest (`Spec.Dispatcher.HeartbeatPeriod`)."""
    # The address pools are top-level fields of Docker's init request, not of its spec.
    path = path.removeprefix("spec.networking.")
    return ".".join(_word(p) for p in path.split("."))


def update_path(path: str) -> str:
    """shoal's field of `swarm update` in Docker's spelling: its body is the spec itself."""
    return "body" if path == "spec" else init_path(path.removeprefix("spec."))


@dataclass(frozen=True)
class InitRequest:
    """Docker's SwarmInitRequest in shoal's terms (lifecycle.init_swarm's arguments)."""
    listen_addr: str
    advertise_addr: str
    spec: dict
    data_path_port: int = 0   # 0: the default (4789), as dockerd reads it
    force_new_cluster: bool = False   # recover this manager's swarm alone (shoal/recovery.py)


def init_request(body: dict) -> InitRequest:
    o = Obj(body)
    listen, advertise = o.str("ListenAddr"), o.str("AdvertiseAddr")
    o.refuse("DataPathAddr", "VXLAN traffic goes over the advertised address")
    data_path_port = o.int("DataPathPort", hi=65535)
    if data_path_port and not DATA_PATH_PORTS[0] <= data_path_port <= DATA_PATH_PORTS[1]:
        raise bad(o.at("DataPathPort"), f"must be a UDP port between {DATA_PATH_PORTS[0]} and "
                                        f"{DATA_PATH_PORTS[1]} (0: the default, 4789)")
    force_new_cluster = o.bool("ForceNewCluster")
    o.refuse("Availability", "set it after the init with `docker node update --availability`",
             ("active",))
    spec = cluster_spec(o.take("Spec"), ClusterSpec(), "Spec")
    if o.bool("AutoLockManagers"):
        spec["encryption_config"]["auto_lock_managers"] = True
    pools = o.strs("DefaultAddrPool")
    if pools:
        spec["networking"]["default_addr_pools"] = pools
    size = o.int("SubnetSize", hi=128)
    if size:
        spec["networking"]["subnet_size"] = size
    o.done()
    return InitRequest(listen, advertise, spec, data_path_port, force_new_cluster)


@dataclass(frozen=True)
class JoinRequest:
    """Docker's SwarmJoinRequest in shoal's terms (lifecycle.join_swarm's arguments)."""
    listen_addr: str
    advertise_addr: str
    remote_addrs: list[str]
    token: str


def join_request(body: dict) -> JoinRequest:
    o = Obj(body)
    listen, advertise = o.str("ListenAddr"), o.str("AdvertiseAddr")
    remotes = o.strs("RemoteAddrs")
    if not remotes or not all(remotes):
        raise bad("RemoteAddrs", "name at least one manager's address (HOST:2377)")
    token = o.str("JoinToken")
    if not token:
        raise bad("JoinToken", "is required: the token `docker swarm join-token worker` (or "
                               "manager) prints on a manager")
    o.refuse("DataPathAddr", "VXLAN traffic goes over the advertised address")
    o.refuse("Availability", "set it after the join with `docker node update --availability`",
             ("active",))
    o.done()
    return JoinRequest(listen, advertise, remotes, token)
