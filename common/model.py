"""The object model: what the managers replicate and the agents act on.

Every object has an `id` and a `meta` whose `version` is the store index of its last change
(set by the store, used for optimistic concurrency). Specs are what users write; statuses are
what the system observes. Later capabilities extend these classes; the codec tolerates fields it
does not know, so replicas and snapshots written by other versions still load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Node
NODE_ROLE_WORKER = "worker"
NODE_ROLE_MANAGER = "manager"
NODE_ROLES = (NODE_ROLE_WORKER, NODE_ROLE_MANAGER)

AVAILABILITY_ACTIVE = "active"
AVAILABILITY_PAUSE = "pause"
AVAILABILITY_DRAIN = "drain"
AVAILABILITIES = (AVAILABILITY_ACTIVE, AVAILABILITY_PAUSE, AVAILABILITY_DRAIN)

NODE_STATE_UNKNOWN = "unknown"
NODE_STATE_READY = "ready"
NODE_STATE_DOWN = "down"
NODE_STATE_DISCONNECTED = "disconnected"


@dataclass
class Meta:
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class Platform:
    os: str = "linux"
    architecture: str = ""


@dataclass
class Resources:
    nano_cpus: int = 0
    memory_bytes: int = 0


@dataclass
class NodeDescription:
    hostname: str = ""
    platform: Platform = field(default_factory=Platform)
    resources: Resources = field(default_factory=Resources)
    engine_version: str = ""


@dataclass
class NodeSpec:
    labels: dict[str, str] = field(default_factory=dict)
    # The role the operator wants; `Node.role` is the role the node has (after its certificate
    # and raft membership followed).
    desired_role: str = NODE_ROLE_WORKER
    availability: str = AVAILABILITY_ACTIVE


@dataclass
class NodeStatus:
    state: str = NODE_STATE_UNKNOWN
    message: str = ""
    addr: str = ""


@dataclass
class ManagerStatus:
    raft_addr: str = ""   # ip:port of the node's raft endpoint
    api_addr: str = ""    # ip:port of its 2377 endpoint


@dataclass
class Node:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: NodeSpec = field(default_factory=NodeSpec)
    description: NodeDescription = field(default_factory=NodeDescription)
    status: NodeStatus = field(default_factory=NodeStatus)
    role: str = NODE_ROLE_WORKER
    manager_status: Optional[ManagerStatus] = None
    # The node's own address on the ingress network: published ports are forwarded from it.
    ingress_attachment: Optional["NetworkAttachment"] = None

    @property
    def simulated(self) -> bool:
        """A node of `shoal sim nodes` (worker/sim): its tasks run nothing, it serves no port."""
        return self.description.engine_version.endswith(SIMULATED_NODE_MARK)


# What a simulated node's engine version ends with (`node inspect` shows it).
SIMULATED_NODE_MARK = "(simulated node)"


# Cluster
@dataclass
class DispatcherConfig:
    heartbeat_period: float = 5.0


@dataclass
class CAConfig:
    node_cert_expiry: float = 90 * 86400.0
    # Docker's ForceRotate: a counter that each root rotation raises (`swarm ca --rotate`);
    # a Docker client asks for a rotation by sending it one higher.
    force_rotate: int = 0


@dataclass
class OrchestrationConfig:
    task_history_retention_limit: int = 5


@dataclass
class NetworkingConfig:
    # where overlay subnets come from when `network create` names none (docker's
    # --default-addr-pool / --default-addr-pool-mask-length)
    default_addr_pools: list[str] = field(default_factory=lambda: ["10.0.0.0/8"])
    subnet_size: int = 24


@dataclass
class EncryptionConfig:
    # Autolock: managers keep their raft secret and TLS key on disk sealed by the unlock key,
    # and a restarted manager serves nothing until `shoal swarm unlock`.
    auto_lock_managers: bool = False


@dataclass
class RaftConfig:
    snapshot_interval: int = 10000      # log entries between snapshots
    keep_old_snapshots: int = 0         # snapshots kept besides the current one (--max-snapshots)
    election_tick_min: float = 0.3
    election_tick_max: float = 0.8


@dataclass
class ClusterSpec:
    name: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    ca_config: CAConfig = field(default_factory=CAConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    raft: RaftConfig = field(default_factory=RaftConfig)
    networking: NetworkingConfig = field(default_factory=NetworkingConfig)
    encryption_config: EncryptionConfig = field(default_factory=EncryptionConfig)


@dataclass
class UnlockKeys:
    # Text form (SHLKEY-1-...); replicated so every manager reseals its secrets when it changes.
    # Never in the API's view of the cluster: `shoal swarm unlock-key` is the one way out.
    current: str = ""
    # The key before the last rotation or disable: a manager that was down then (or restarted
    # before it resealed) is still locked with it.
    previous: str = ""


@dataclass
class JoinTokens:
    worker: str = ""
    manager: str = ""


@dataclass
class RootRotation:
    """A root CA rotation under way (`shoal swarm ca --rotate`, manager/controlapi/ca.py): the
    new root issues from its start; it replaces the root once every node holds a certificate
    from it and trusts it."""
    cert_pem: bytes = b""
    key_pem: bytes = b""                 # never leaves the managers, like RootCAState.key_pem
    cross_signed_pem: bytes = b""        # the new root issued by the old one
    started_at: float = 0.0


@dataclass
class RootCAState:
    cert_pem: bytes = b""
    # Replicated so that every manager can issue certificates; never leaves the managers
    # (the API's view of the cluster drops it).
    key_pem: bytes = b""
    digest: str = ""
    rotation: Optional[RootRotation] = None
    # Digests of the roots rotated out: a join token that pins one is "old", not "foreign".
    previous_digests: list[str] = field(default_factory=list)


@dataclass
class Cluster:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: ClusterSpec = field(default_factory=ClusterSpec)
    root_ca: RootCAState = field(default_factory=RootCAState)
    join_tokens: JoinTokens = field(default_factory=JoinTokens)
    unlock_keys: UnlockKeys = field(default_factory=UnlockKeys)
    # The overlays' VXLAN UDP port, chosen at `swarm init --data-path-port` only (as Docker's):
    # every node's tunnels must agree on it, so changing it live would cut every overlay.
    data_path_port: int = 4789


# Services and tasks: the building blocks the orchestrators work on.
@dataclass
class RestartPolicy:
    condition: str = "any"          # none | on-failure | any
    delay: float = 5.0
    max_attempts: int = 0           # 0: unlimited
    window: float = 0.0


RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")  # Docker's names


@dataclass
class ContainerRestartPolicy:
    """`container run --restart` (standalone containers only), as Docker's: no, on-failure
    (at most maximum_retry_count restarts when it is above 0), always, unless-stopped."""
    name: str = "no"
    maximum_retry_count: int = 0


@dataclass
class ResourceRequirements:
    limits: Resources = field(default_factory=Resources)
    reservations: Resources = field(default_factory=Resources)
    pids_limit: int = 0


@dataclass
class Placement:
    constraints: list[str] = field(default_factory=list)
    preferences: list[str] = field(default_factory=list)
    max_replicas: int = 0
    # the image's platforms (Docker's clients fill them from the registry): a task goes only
    # to a node of one of them; empty: any node
    platforms: list[Platform] = field(default_factory=list)


@dataclass
class VolumeOptions:
    """How a named volume is created on a node the first time a task needs it (Docker's
    Mount.VolumeOptions): labels, and the `local` driver's options (type, device, o)."""
    labels: dict[str, str] = field(default_factory=dict)
    driver: str = "local"
    driver_opts: dict[str, str] = field(default_factory=dict)
    no_copy: bool = False


@dataclass
class TmpfsOptions:
    size_bytes: int = 0             # 0: the kernel's default (half the memory)
    mode: int = 0                   # 0: 1777


@dataclass
class Mount:
    type: str = "volume"            # bind | volume | tmpfs
    source: str = ""
    target: str = ""
    read_only: bool = False
    volume_options: Optional[VolumeOptions] = None
    tmpfs_options: Optional[TmpfsOptions] = None


@dataclass
class SecretReference:
    secret_id: str = ""
    secret_name: str = ""
    target: str = ""
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


@dataclass
class ConfigReference:
    config_id: str = ""
    config_name: str = ""
    target: str = ""
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


HEALTH_NONE = ["NONE"]


@dataclass
class HealthConfig:
    """Docker's HEALTHCHECK: test is ["CMD", argv...], ["CMD-SHELL", "command"] or ["NONE"]
    (checks off, even the image's); an empty test, or a zero duration or retries, takes the
    image's value (then Docker's default: 30s, 30s, 0s, 3)."""
    test: list[str] = field(default_factory=list)
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    retries: int = 0


@dataclass
class Ulimit:
    name: str = ""                  # nofile, nproc, core, ... (setrlimit's names without RLIMIT_)
    soft: int = 0
    hard: int = 0


@dataclass
class DNSConfig:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class LogDriver:
    """json-file (options max-size, max-file) or none."""
    name: str = "json-file"
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerSpec:
    image: str = ""
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    dir: str = ""
    user: str = ""
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    secrets: list[SecretReference] = field(default_factory=list)
    configs: list[ConfigReference] = field(default_factory=list)
    stop_signal: str = "SIGTERM"
    stop_grace_period: float = 10.0
    healthcheck: Optional[HealthConfig] = None  # None: the image's own, if any
    # Docker's names and meanings (ContainerSpec in the Engine API)
    tty: bool = False
    open_stdin: bool = False
    init: bool = False              # a tiny init as pid 1 that reaps and forwards signals
    read_only: bool = False         # the root filesystem
    cap_add: list[str] = field(default_factory=list)     # "CAP_NET_ADMIN" or "ALL"
    cap_drop: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    ulimits: list[Ulimit] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)      # supplementary groups (names or ids)
    hosts: list[str] = field(default_factory=list)       # "IP hostname [alias...]" for /etc/hosts
    dns_config: Optional[DNSConfig] = None


@dataclass
class NetworkAttachmentConfig:
    target: str = ""
    aliases: list[str] = field(default_factory=list)


@dataclass
class TaskSpec:
    container: ContainerSpec = field(default_factory=ContainerSpec)
    resources: ResourceRequirements = field(default_factory=ResourceRequirements)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    placement: Placement = field(default_factory=Placement)
    networks: list[NetworkAttachmentConfig] = field(default_factory=list)
    force_update: int = 0
    log_driver: Optional[LogDriver] = None  # None: json-file without rotation limits


SERVICE_MODES = ("replicated", "global", "replicated-job", "global-job")


@dataclass
class ServiceMode:
    mode: str = "replicated"        # replicated | global | replicated-job | global-job
    replicas: int = 1
    # jobs: how many tasks run at once, and how many must complete (replicated-job)
    max_concurrent: int = 0
    total_completions: int = 0

    @property
    def is_job(self) -> bool:
        return self.mode.endswith("-job")

    @property
    def is_global(self) -> bool:
        return self.mode.startswith("global")


@dataclass
class PortConfig:
    name: str = ""
    protocol: str = "tcp"
    target_port: int = 0
    published_port: int = 0
    publish_mode: str = "ingress"


@dataclass
class EndpointSpec:
    mode: str = "vip"               # vip | dnsrr
    ports: list[PortConfig] = field(default_factory=list)


@dataclass
class VirtualIP:
    network_id: str = ""
    addr: str = ""                  # "10.0.1.2/24"


@dataclass
class Endpoint:
    """What the allocator gave a service: its ports (published ones resolved) and a VIP per
    network it is attached to."""
    ports: list[PortConfig] = field(default_factory=list)
    virtual_ips: list[VirtualIP] = field(default_factory=list)


@dataclass
class NetworkAttachment:
    network_id: str = ""
    address: str = ""               # "10.0.1.5/24"
    mac: str = ""


UPDATE_FAILURE_ACTIONS = ("pause", "continue", "rollback")
UPDATE_ORDERS = ("stop-first", "start-first")


@dataclass
class UpdateConfig:
    parallelism: int = 1            # tasks replaced at once (0: all)
    delay: float = 0.0              # between batches
    failure_action: str = "pause"   # pause | continue | rollback (rollback_config: pause | continue)
    monitor: float = 5.0            # how long a new task is watched for failure
    max_failure_ratio: float = 0.0
    order: str = "stop-first"       # stop-first | start-first


DEPENDENCY_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


@dataclass
class ServiceDependency:
    """Compose's depends_on, kept by the managers: the tasks of a service that has never had
    one are not created until each dependency (a service, by name) meets its condition."""
    service: str = ""
    condition: str = "service_started"


@dataclass
class ServiceSpec:
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    task_template: TaskSpec = field(default_factory=TaskSpec)
    mode: ServiceMode = field(default_factory=ServiceMode)
    endpoint_spec: EndpointSpec = field(default_factory=EndpointSpec)
    update_config: UpdateConfig = field(default_factory=UpdateConfig)
    rollback_config: UpdateConfig = field(default_factory=UpdateConfig)
    depends_on: list[ServiceDependency] = field(default_factory=list)


UPDATE_STATES = ("updating", "paused", "completed", "rollback_started", "rollback_paused",
                 "rollback_completed")


@dataclass
class UpdateStatus:
    state: str = ""                 # "" (never updated) or one of UPDATE_STATES
    message: str = ""
    started_at: float = 0.0
    completed_at: float = 0.0


@dataclass
class SentSpec:
    """A service spec as a client of the Docker Engine API sent it (shoal/dockerapi), as JSON
    text, with the digest of the ServiceSpec it became: it stands for the service's spec or
    previous spec only while that digest matches, so a change made otherwise shows through."""
    json: str = ""
    digest: str = ""


@dataclass
class Service:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: ServiceSpec = field(default_factory=ServiceSpec)
    previous_spec: Optional[ServiceSpec] = None
    update_status: UpdateStatus = field(default_factory=UpdateStatus)
    endpoint: Endpoint = field(default_factory=Endpoint)
    # Docker's "spec as the client sent it" for the spec and the previous spec (two at most);
    # empty for a service made through shoal's own API.
    sent_specs: list[SentSpec] = field(default_factory=list)


# Task states only move forward; their order is their rank.
TASK_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running",
               "complete", "shutdown", "failed", "rejected", "remove", "orphaned")
TASK_STATE_RANK = {s: i for i, s in enumerate(TASK_STATES)}
TASK_TERMINAL_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "remove", "orphaned"})
# Desired states of a task that is meant to run. "ready" is a replacement that waits for the task
# it replaces to stop (stop-first, as in Swarm): its node prepares it but does not start it yet.
DESIRED_UP = frozenset({"ready", "running"})


@dataclass
class TaskStatus:
    state: str = "new"
    message: str = ""
    err: str = ""
    timestamp: float = 0.0
    exit_code: Optional[int] = None
    container_id: str = ""
    # "" (no health check), starting, healthy or unhealthy; reported by the agent
    health: str = ""


@dataclass
class Task:
    id: str
    meta: Meta = field(default_factory=Meta)
    service_id: str = ""
    service_name: str = ""
    slot: int = 0                   # replicated: 1..N; global: 0 (one per node)
    node_id: str = ""
    spec: TaskSpec = field(default_factory=TaskSpec)
    spec_version: int = 0           # the service version the spec was taken from
    ports: list[PortConfig] = field(default_factory=list)
    networks: list[NetworkAttachment] = field(default_factory=list)
    desired_state: str = "running"
    status: TaskStatus = field(default_factory=TaskStatus)
    # A standalone container (`shoal container run`) has a name and no service.
    container_name: str = ""
    # Standalone, `container run -d --rm`: the task (and so its container) goes once it stopped.
    auto_remove: bool = False
    # Standalone, `container run --restart`: its node runs the container again when it exits.
    restart: Optional[ContainerRestartPolicy] = None

    @property
    def name(self) -> str:
        """Like docker's container names: web.3.<id> (global: web.<node id>.<id>)."""
        if self.container_name:
            return self.container_name
        return f"{self.service_name}.{self.slot or self.node_id}.{self.id}"

    @property
    def standalone(self) -> bool:
        return not self.service_id and bool(self.container_name)

    @property
    def terminal(self) -> bool:
        return self.status.state in TASK_TERMINAL_STATES

    @property
    def desired_up(self) -> bool:
        return self.desired_state in DESIRED_UP


@dataclass
class IPAMConfig:
    subnet: str = ""
    gateway: str = ""


@dataclass
class NetworkSpec:
    name: str = ""
    driver: str = "overlay"
    labels: dict[str, str] = field(default_factory=dict)
    ipam: list[IPAMConfig] = field(default_factory=list)
    attachable: bool = False
    ingress: bool = False


@dataclass
class Network:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: NetworkSpec = field(default_factory=NetworkSpec)
    # allocated in the transaction that creates the network
    vni: int = 0
    subnet: str = ""
    gateway: str = ""


@dataclass
class SecretSpec:
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    data: bytes = b""


@dataclass
class Secret:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: SecretSpec = field(default_factory=SecretSpec)


@dataclass
class ConfigSpec:
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    data: bytes = b""


@dataclass
class Config:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: ConfigSpec = field(default_factory=ConfigSpec)


@dataclass
class ClientCert:
    """A client certificate issued for remote access (`shoal swarm client-cert`). The remote
    listener accepts a client certificate only while its record is here and not revoked, so a
    revocation reaches every manager with the replica."""
    id: str
    meta: Meta = field(default_factory=Meta)
    name: str = ""
    serial: str = ""           # hex, as in the certificate
    not_after: float = 0.0
    revoked_at: float = 0.0    # 0: in force


@dataclass
class RegistryAuth:
    """The registry credentials a service was deployed with (`--with-registry-auth`): kept
    apart from its spec so that no view of the service shows them, and handed only to the
    nodes that run its tasks, for their pulls from that one registry."""
    id: str                    # the service's id
    meta: Meta = field(default_factory=Meta)
    registry: str = ""         # HOST[:PORT] of the service's image: never sent anywhere else
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass
class RemovedNode:
    """A node removed from the swarm (`node rm`): its certificate stays valid until it
    expires, so 2377 refuses it by this record (manager/controlapi/middleware.py)."""
    id: str                    # the node's id, its certificate's CN
    meta: Meta = field(default_factory=Meta)
    removed_at: float = 0.0


@dataclass
class NodeTLS:
    """What a node reports of its TLS material (manager/controlapi/ca.py): the key of the root
    that issued its certificate and the digest of the roots it trusts. A root rotation is done
    when every node's record matches the new root (as SwarmKit's node TLSInfo)."""
    id: str                    # the node's id
    meta: Meta = field(default_factory=Meta)
    issuer_key_id: str = ""
    trust_digest: str = ""


# Table name -> object class; the store's tables and the codec's type tags.
TABLES: dict[str, type] = {
    "clusters": Cluster,
    "nodes": Node,
    "services": Service,
    "tasks": Task,
    "networks": Network,
    "secrets": Secret,
    "configs": Config,
    "client_certs": ClientCert,
    "registry_auths": RegistryAuth,
    "removed_nodes": RemovedNode,
    "node_tls": NodeTLS,
}
