"""The cluster object as Docker's swarm.Swarm (and the ClusterInfo /info carries)."""
from __future__ import annotations

from common.model import Cluster
from shoal.dockerapi.translate.values import meta, nanos

# VXLAN's port: shoal's overlays use the standard one, as Docker's default.
DATA_PATH_PORT = 4789


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
            "Raft": {"SnapshotInterval": s.raft.snapshot_interval},
            "Dispatcher": {"HeartbeatPeriod": nanos(s.dispatcher.heartbeat_period)},
            "CAConfig": {"NodeCertExpiry": nanos(s.ca_config.node_cert_expiry)},
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": s.encryption_config.auto_lock_managers},
        },
        "TLSInfo": {"TrustRoot": c.root_ca.cert_pem.decode("ascii", "replace")},
        "RootRotationInProgress": False,
        "DefaultAddrPool": list(net.default_addr_pools),
        "SubnetSize": net.subnet_size,
        "DataPathPort": DATA_PATH_PORT,
    }


def swarm(c: Cluster) -> dict:
    """GET /swarm: the cluster with its join tokens, as dockerd gives them to a manager's
    (root-only) socket; `docker swarm join-token` reads them here."""
    return {**cluster_info(c), "JoinTokens": {"Worker": c.join_tokens.worker,
                                              "Manager": c.join_tokens.manager}}
