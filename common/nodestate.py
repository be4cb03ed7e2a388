"""What a node keeps on disk: its identity, certificates, the raft secret (managers) and the
addresses it knows. Keys and secrets are written 0600; every write is atomic.

With autolock on, a manager's TLS key and raft secret exist on disk only inside the sealed key
bundle (common/keywrap.py); NodeFiles holds the unlock key in memory once the node is unlocked
and reads and writes those two secrets through the bundle, so callers never see the difference.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from common import keywrap
from common.fsutil import read_json, write_json, write_private, write_atomic

log = logging.getLogger("shoal.node")

RAFT_PORT = 2378
API_PORT = 2377
VXLAN_PORT = 4789


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
        self.bundle_file = self.cert_dir / "keys.sealed"
        # Set once the node is unlocked (or autolock was turned on while it ran); never on disk.
        self._unlock_key: Optional[keywrap.UnlockKey] = None
        self._save_failing = False

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

    def try_save_state(self, state: NodeState) -> bool:
        """save_state for the loops that keep it current: a full disk must not end them. False
        (and one warning per spell of failures) if it could not be written; call again later."""
        try:
            self.save_state(state)
        except OSError as exc:
            if not self._save_failing:
                log.warning("cannot save %s (%s): the node keeps its state in memory and saves "
                            "it once there is room", self.state_file, exc.strerror or exc)
            self._save_failing = True
            return False
        if self._save_failing:
            log.info("saved %s again", self.state_file)
        self._save_failing = False
        return True

    # certificates
    def save_certs(self, ca_pem: bytes, cert_pem: bytes, key_pem: Optional[bytes] = None) -> None:
        write_atomic(self.cert_dir / "ca.crt", ca_pem, 0o644)
        write_atomic(self.cert_dir / "node.crt", cert_pem, 0o644)
        if key_pem is not None:
            self._write_secret(_NODE_KEY, key_pem)

    def load_certs(self) -> tuple[bytes, bytes, bytes]:
        return ((self.cert_dir / "ca.crt").read_bytes(), (self.cert_dir / "node.crt").read_bytes(),
                self._read_secret(_NODE_KEY))

    def save_raft_secret(self, secret: bytes) -> None:
        self._write_secret(_RAFT_SECRET, secret)

    def load_raft_secret(self) -> bytes:
        return self._read_secret(_RAFT_SECRET)

    def wipe_raft(self) -> None:
        """Forget the raft data and secret (demotion, leave). A worker is never locked, so the
        TLS key comes out of the bundle into a plain 0600 file again."""
        shutil.rmtree(self.raft_dir, ignore_errors=True)
        self.raft_secret_file.unlink(missing_ok=True)
        if self.bundle_file.exists() and self._unlock_key is not None:
            secrets = keywrap.open_bundle(self._unlock_key, self.bundle_file.read_bytes())
            if _NODE_KEY in secrets and not (self.cert_dir / _NODE_KEY).exists():
                write_private(self.cert_dir / _NODE_KEY, secrets[_NODE_KEY])
            self.bundle_file.unlink()
        self._unlock_key = None

    def wipe(self) -> None:
        """Leave the swarm: forget identity, certificates and raft data."""
        self._unlock_key = None
        shutil.rmtree(self.raft_dir, ignore_errors=True)
        shutil.rmtree(self.cert_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)

    # autolock
    def is_locked(self) -> bool:
        """Some secret this node needs exists only sealed, and no unlock key was given yet."""
        return (self._unlock_key is None and self.bundle_file.exists()
                and any(not (self.cert_dir / n).exists() for n in _SEALABLE))

    def unlock(self, key: keywrap.UnlockKey) -> None:
        """Check the key against the bundle (WrongUnlockKey if it does not open it) and keep it.
        A wrong key changes nothing."""
        keywrap.open_bundle(key, self.bundle_file.read_bytes())
        self._unlock_key = key

    def forget_unlock_key(self) -> None:
        self._unlock_key = None

    def sealed_with(self) -> Optional[str]:
        """The unlock key id the secrets are sealed with; "" if they are all in plain files;
        None for anything in between (a crash mid-change), which the next reseal repairs."""
        plain = [n for n in _SEALABLE if (self.cert_dir / n).exists()]
        if not self.bundle_file.exists():
            return ""
        if plain:
            return None
        return keywrap.bundle_key_id(self.bundle_file.read_bytes())

    def reseal(self, key: Optional[keywrap.UnlockKey]) -> None:
        """Seal the secrets under `key`, or put them back in plain 0600 files for None.

        The new form is written (atomically) before the old one is removed, so a crash leaves
        both, never neither; reads prefer the plain file and the next reseal tidies up.
        """
        secrets = {}
        for name in _SEALABLE:
            try:
                secrets[name] = self._read_secret(name)
            except FileNotFoundError:
                pass
        if key is None:
            for name, value in secrets.items():
                write_private(self.cert_dir / name, value)
            self.bundle_file.unlink(missing_ok=True)
        else:
            write_private(self.bundle_file, keywrap.seal_bundle(key, secrets))
            for name in _SEALABLE:
                (self.cert_dir / name).unlink(missing_ok=True)
        self._unlock_key = key

    def _read_secret(self, name: str) -> bytes:
        path = self.cert_dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not self.bundle_file.exists():
                raise
        if self._unlock_key is None:
            raise keywrap.NodeLocked()
        secrets = keywrap.open_bundle(self._unlock_key, self.bundle_file.read_bytes())
        if name not in secrets:
            raise FileNotFoundError(path)
        return secrets[name]

    def _write_secret(self, name: str, value: bytes) -> None:
        if self._unlock_key is None:
            write_private(self.cert_dir / name, value)
            return
        secrets = (keywrap.open_bundle(self._unlock_key, self.bundle_file.read_bytes())
                   if self.bundle_file.exists() else {})
        secrets[name] = value
        write_private(self.bundle_file, keywrap.seal_bundle(self._unlock_key, secrets))
        (self.cert_dir / name).unlink(missing_ok=True)


_NODE_KEY = "node.key"
_RAFT_SECRET = "raft-secret"
# What autolock seals: the TLS key (a manager certificate opens the whole control API) and the
# raft secret (the raft data key is derived from it).
_SEALABLE = (_NODE_KEY, _RAFT_SECRET)
