"""What a node keeps on disk: its identity, certificates, the raft secret (managers) and the
addresses it knows. Keys and secrets are written 0600; every write is atomic."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from common.fsutil import read_json, write_json, write_private, write_atomic

RAFT_PORT = 2378
API_PORT = 2377


@dataclass
class NodeState:
    node_id: str = ""
    cluster_id: str = ""
    role: str = ""                      # "" until the node is in a swarm
    advertise_addr: str = ""
    listen_addr: str = f"0.0.0.0:{API_PORT}"
    managers: list[str] = field(default_factory=list)       # api addrs (ip:port) known
    raft_members: list[str] = field(default_factory=list)   # raft addrs at the last change

    @property
    def in_swarm(self) -> bool:
        return bool(self.node_id)

    @property
    def api_addr(self) -> str:
        return f"{self.advertise_addr}:{self.listen_addr.rsplit(':', 1)[1]}"

    @property
    def raft_addr(self) -> str:
        return f"{self.advertise_addr}:{RAFT_PORT}"


class NodeFiles:
    def __init__(self, data_root: Path) -> None:
        self.root = Path(data_root)
        self.state_file = self.root / "state.json"
        self.cert_dir = self.root / "certificates"
        self.raft_dir = self.root / "raft"
        self.raft_secret_file = self.root / "certificates" / "raft-secret"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.cert_dir.mkdir(exist_ok=True)
        self.cert_dir.chmod(0o700)

    def load_state(self) -> NodeState:
        data = read_json(self.state_file, {}) or {}
        known = NodeState.__dataclass_fields__
        return NodeState(**{k: v for k, v in data.items() if k in known})

    def save_state(self, state: NodeState) -> None:
        write_json(self.state_file, asdict(state))

    # certificates
    def save_certs(self, ca_pem: bytes, cert_pem: bytes, key_pem: Optional[bytes] = None) -> None:
        write_atomic(self.cert_dir / "ca.crt", ca_pem, 0o644)
        write_atomic(self.cert_dir / "node.crt", cert_pem, 0o644)
        if key_pem is not None:
            write_private(self.cert_dir / "node.key", key_pem)

    def load_certs(self) -> tuple[bytes, bytes, bytes]:
        return ((self.cert_dir / "ca.crt").read_bytes(), (self.cert_dir / "node.crt").read_bytes(),
                (self.cert_dir / "node.key").read_bytes())

    def save_raft_secret(self, secret: bytes) -> None:
        write_private(self.raft_secret_file, secret)

    def load_raft_secret(self) -> bytes:
        return self.raft_secret_file.read_bytes()

    def wipe_raft(self) -> None:
        shutil.rmtree(self.raft_dir, ignore_errors=True)
        self.raft_secret_file.unlink(missing_ok=True)

    def wipe(self) -> None:
        """Leave the swarm: forget identity, certificates and raft data."""
        self.wipe_raft()
        shutil.rmtree(self.cert_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
