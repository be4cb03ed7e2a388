"""The replicated state: tables of objects, indexes, atomic transactions and change events.

The store is a deterministic state machine. A transaction (a batch of create/update/delete
operations) is proposed as one raft log entry and `apply`'d on every manager in the same order;
it applies whole or not at all. Every change sets the object's `meta.version` to the store
index of the transaction, and an update or delete that names the version it was based on fails
if the object moved on since (optimistic concurrency).

`apply` runs on the raft thread; reads come from the event loop. One lock covers both, and
stored objects are never mutated in place (updates store fresh objects), so a reference a
reader holds stays consistent.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import msgpack

from common import codec
from common.model import TABLES

# Objects whose name must be unique in their table, and how to read it.
_UNIQUE_NAMES: dict[str, Callable[[Any], str]] = {
    "services": lambda o: o.spec.name,
    "networks": lambda o: o.spec.name,
    "secrets": lambda o: o.spec.name,
    "configs": lambda o: o.spec.name,
}

# Secondary indexes: table -> index name -> key function.
_INDEXES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "tasks": {
        "service_id": lambda t: t.service_id,
        "node_id": lambda t: t.node_id,
        "slot": lambda t: (t.service_id, t.slot),
    },
    # the managers among thousands of nodes, asked for on every heartbeat
    "nodes": {"role": lambda n: n.role},
}

_RECENT_TXN_LIMIT = 10000


@dataclass
class Op:
    action: str                 # create | update | delete
    table: str
    obj: Any = None             # the new object (create, update)
    id: str = ""                # delete
    expect_version: Optional[int] = None

    def to_plain(self) -> dict:
        return {"a": self.action, "t": self.table,
                "o": codec.to_plain(self.obj) if self.obj is not None else None,
                "i": self.id or (self.obj.id if self.obj is not None else ""),
                "v": self.expect_version}

    @classmethod
    def from_plain(cls, d: dict) -> "Op":
        table = d["t"]
        obj = codec.from_plain(TABLES[table], d["o"]) if d.get("o") is not None else None
        return cls(action=d["a"], table=table, obj=obj, id=d.get("i", ""), expect_version=d.get("v"))


@dataclass
class Transaction:
    ops: list[Op] = field(default_factory=list)
    # Proposals are retried across leader changes; the id makes a retry harmless.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # When it was made, on the proposer's clock: in the entry, so every manager's events of it
    # carry the same time (manager/events/).
    time: float = field(default_factory=time.time)

    def create(self, table: str, obj: Any) -> "Transaction":
        self.ops.append(Op("create", table, obj))
        return self

    def update(self, table: str, obj: Any, *, check_version: bool = True) -> "Transaction":
        self.ops.append(Op("update", table, obj,
                           expect_version=obj.meta.version if check_version else None))
        return self

    def delete(self, table: str, obj_id: str, expect_version: Optional[int] = None) -> "Transaction":
        self.ops.append(Op("delete", table, id=obj_id, expect_version=expect_version))
        return self

    def encode(self) -> bytes:
        return codec.pack({"id": self.id, "ops": [op.to_plain() for op in self.ops],
                           "t": self.time})

    @classmethod
    def decode(cls, data: bytes) -> "Transaction":
        d = codec.unpack(data)
        return cls(ops=[Op.from_plain(o) for o in d["ops"]], id=d["id"],
                   time=float(d.get("t") or 0.0))


@dataclass
class Event:
    action: str          # create | update | delete
    table: str
    obj: Any             # the object after the change (before, for delete)
    old: Any = None
    index: int = 0
    time: float = 0.0    # the transaction's (Transaction.time); 0 for a snapshot's resync


@dataclass
class TxnResult:
    ok: bool
    index: int = 0
    code: str = ""       # conflict | not_found | exists
    message: str = ""

    def to_plain(self) -> dict:
        return {"ok": self.ok, "index": self.index, "code": self.code, "message": self.message}

    @classmethod
    def from_plain(cls, d: dict) -> "TxnResult":
        return cls(**d)


def _object_label(table: str, obj_id: str) -> str:
    return f"{table[:-1]} {obj_id}"


class Store:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._reset()

    def _reset(self) -> None:
        self._tables: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
        self._names: dict[str, dict[str, str]] = {t: {} for t in _UNIQUE_NAMES}
        self._indexes: dict[str, dict[str, dict[Any, set[str]]]] = {
            t: {name: {} for name in idx} for t, idx in _INDEXES.items()}
        self._recent: OrderedDict[str, dict] = OrderedDict()
        self.index = 0
        # (table, id) -> (version, msgpack bytes) of the last snapshot (see snapshot)
        self._packed: dict[tuple[str, str], tuple[int, bytes]] = {}

    # ---- reads (any thread) ---------------------------------------------------------------
    def get(self, table: str, obj_id: str) -> Any:
        """A private copy: change it freely and propose it in a transaction."""
        with self._lock:
            obj = self._tables[table].get(obj_id)
        return codec.clone(obj) if obj is not None else None

    def peek(self, table: str, obj_id: str) -> Any:
        """The stored object itself (None if absent): read-only, for hot paths that mostly only
        look (a heartbeat); use get() for a copy to change."""
        with self._lock:
            return self._tables[table].get(obj_id)

    def list(self, table: str) -> list[Any]:
        """The stored objects themselves: read-only, clone before changing."""
        with self._lock:
            return list(self._tables[table].values())

    def count(self, table: str) -> int:
        with self._lock:
            return len(self._tables[table])

    def by_name(self, table: str, name: str) -> Any:
        with self._lock:
            obj_id = self._names[table].get(name)
            return self._tables[table].get(obj_id) if obj_id else None

    def by_index(self, table: str, index: str, key: Any) -> list[Any]:
        with self._lock:
            ids = self._indexes[table][index].get(key, ())
            objs = self._tables[table]
            return [objs[i] for i in ids]

    def find(self, table: str, ref: str) -> Any:
        """By full id, by name, or by a unique id prefix (as docker resolves references)."""
        with self._lock:
            objs = self._tables[table]
            if ref in objs:
                return objs[ref]
            if table in self._names and ref in self._names[table]:
                return objs[self._names[table][ref]]
            matches = [o for i, o in objs.items() if i.startswith(ref)] if ref else []
            return matches[0] if len(matches) == 1 else None

    def outcome(self, txn_id: str) -> Optional[TxnResult]:
        """The result of transaction `txn_id` if it was applied recently (the last
        _RECENT_TXN_LIMIT, snapshots included): how a retried request learns its fate."""
        with self._lock:
            done = self._recent.get(txn_id)
        return TxnResult.from_plain(done) if done is not None else None

    # ---- events ---------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[list[Event]], None]) -> Callable[[], None]:
        """`listener` is called on the applying (raft) thread with each transaction's events."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    # ---- the state machine ----------------------------------------------------------------
    def apply(self, payload: bytes) -> dict:
        txn = Transaction.decode(payload)
        with self._lock:
            done = self._recent.get(txn.id)
            if done is not None:
                return done
            failure = self._check(txn.ops)
            if failure is not None:
                result = failure
                events: list[Event] = []
            else:
                self.index += 1
                events = [self._apply_op(op) for op in txn.ops]
                for event in events:
                    event.time = txn.time
                result = TxnResult(True, self.index)
            plain = result.to_plain()
            self._recent[txn.id] = plain
            while len(self._recent) > _RECENT_TXN_LIMIT:
                self._recent.popitem(last=False)
            listeners = list(self._listeners)
        if events:
            for listener in listeners:
                listener(events)
        return plain

    def _check(self, ops: Iterable[Op]) -> Optional[TxnResult]:
        # Later ops in one transaction may depend on earlier ones (create then update), so
        # existence is tracked through the batch.
        present: dict[tuple[str, str], Any] = {}
        names: dict[tuple[str, str], str] = {}

        def exists(table: str, obj_id: str) -> Any:
            key = (table, obj_id)
            if key in present:
                return present[key]
            return self._tables[table].get(obj_id)

        for op in ops:
            if op.table not in self._tables:
                return TxnResult(False, code="invalid", message=f"unknown table {op.table!r}")
            obj_id = op.obj.id if op.obj is not None else op.id
            cur = exists(op.table, obj_id)
            label = _object_label(op.table, obj_id)
            if op.action == "create":
                if cur is not None:
                    return TxnResult(False, code="exists", message=f"{label} already exists")
            elif op.action in ("update", "delete"):
                if cur is None:
                    return TxnResult(False, code="not_found", message=f"{label} not found")
                if op.expect_version is not None and cur.meta.version != op.expect_version:
                    return TxnResult(False, code="conflict", message=(
                        f"{label} changed since it was read (version {op.expect_version}, "
                        f"now {cur.meta.version}); read it again and retry"))
            else:
                return TxnResult(False, code="invalid", message=f"unknown action {op.action!r}")
            if op.table in _UNIQUE_NAMES and op.action in ("create", "update"):
                name = _UNIQUE_NAMES[op.table](op.obj)
                holder = names.get((op.table, name), self._names[op.table].get(name))
                if holder is not None and holder != obj_id and exists(op.table, holder) is not None:
                    return TxnResult(False, code="exists",
                                     message=f"{op.table[:-1]} named {name!r} already exists")
                names[(op.table, name)] = obj_id
            present[(op.table, obj_id)] = None if op.action == "delete" else (op.obj or cur)
        return None

    def _apply_op(self, op: Op) -> Event:
        table = self._tables[op.table]
        if op.action == "delete":
            old = table.pop(op.id)
            self._unindex(op.table, old)
            return Event("delete", op.table, old, old, self.index)
        obj = op.obj
        obj.meta.version = self.index
        old = table.get(obj.id)
        if old is not None:
            self._unindex(op.table, old)
        table[obj.id] = obj
        self._index(op.table, obj)
        return Event(op.action, op.table, obj, old, self.index)

    def _index(self, table: str, obj: Any) -> None:
        if table in _UNIQUE_NAMES:
            self._names[table][_UNIQUE_NAMES[table](obj)] = obj.id
        for name, key in _INDEXES.get(table, {}).items():
            self._indexes[table][name].setdefault(key(obj), set()).add(obj.id)

    def _unindex(self, table: str, obj: Any) -> None:
        if table in _UNIQUE_NAMES:
            name = _UNIQUE_NAMES[table](obj)
            if self._names[table].get(name) == obj.id:
                del self._names[table][name]
        for name, key in _INDEXES.get(table, {}).items():
            bucket = self._indexes[table][name].get(key(obj))
            if bucket is not None:
                bucket.discard(obj.id)
                if not bucket:
                    del self._indexes[table][name][key(obj)]

    # ---- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole store as codec.pack would write it, built from each object's packed bytes.

        An object's bytes are kept from the last snapshot while its version stays the same
        (every write replaces the object and sets a new version), so a snapshot re-packs only
        what changed since the last one. Raft takes snapshots on its own thread: packing 100,000
        tasks from scratch each time held it for seconds, long enough to lose the leadership."""
        with self._lock:
            index = self.index
            tables = {t: list(objs.values()) for t, objs in self._tables.items()}
            recent = list(self._recent.items())
        old_cache = self._packed
        cache: dict[tuple[str, str], tuple[int, bytes]] = {}
        packer = msgpack.Packer(use_bin_type=True)
        parts = [packer.pack_map_header(2), packer.pack("v"), packer.pack(codec.FORMAT_VERSION),
                 packer.pack("d"), packer.pack_map_header(3), packer.pack("index"),
                 packer.pack(index), packer.pack("tables"), packer.pack_map_header(len(tables))]
        for table, objs in tables.items():
            parts.append(packer.pack(table))
            parts.append(packer.pack_array_header(len(objs)))
            for obj in objs:
                key, version = (table, obj.id), obj.meta.version
                hit = old_cache.get(key)
                packed = hit[1] if hit is not None and hit[0] == version else \
                    packer.pack(codec.to_plain(obj))
                cache[key] = (version, packed)
                parts.append(packed)
        parts.append(packer.pack("recent"))
        parts.append(packer.pack(codec.to_plain(recent)))
        self._packed = cache     # only what is stored now: deleted objects drop out
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        state = codec.unpack(data)
        with self._lock:
            self._reset()
            self.index = state["index"]
            for table, objs in state["tables"].items():
                cls = TABLES.get(table)
                if cls is None:
                    continue  # a table from a newer shoal: nothing here knows how to use it
                for plain in objs:
                    obj = codec.from_plain(cls, plain)
                    self._tables[table][obj.id] = obj
                    self._index(table, obj)
            self._recent = OrderedDict((k, v) for k, v in state.get("recent", []))
            listeners = list(self._listeners)
        # Watchers must resynchronise: tell them everything is new.
        events = [Event("create", t, o, None, self.index)
                  for t in TABLES for o in self.list(t)]
        for listener in listeners:
            listener(events)
