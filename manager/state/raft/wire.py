"""How pysyncobj puts our entries on the wire and in its journal.

pysyncobj pickles with protocol 2, where `bytes` become latin-1 text: our entries are
ciphertext, so every byte from 0x80 up takes two, and entries grow by half in the journal and
on the wire. Worse, an entry over its batch size (64 KiB) goes to followers in parts, and the
sender marks the last part by the entry's unpickled length: with the growth, the followers
got "finish" parts early, could not unpickle them ("pickle data was truncated") and never
acknowledged the entry. A service of 2,000 replicas (about a megabyte) stalled replication
until the leader was deposed (issue 20).

Protocol 4 pickles bytes as bytes, so an entry pickles to its length plus a few dozen bytes,
and the batch size is raised so that entries go whole up to 16 MiB. Past that, pysyncobj
still splits them, and misjudges the last part only when an entry's length falls within
those few dozen bytes below a multiple of 16 MiB. Any Python 3 reads both protocols, so
managers of either version read each other's entries and journals.

Every message is also zlib-compressed (level 3) before pysyncobj encrypts it: entries are
ciphertext, which does not compress, and level 3 spent CPU on the raft thread for nothing.
Level 1 is kept for the few small messages that do compress; either level reads the same.
"""
from __future__ import annotations

import pickle
import types
import zlib

import pysyncobj.pickle
import pysyncobj.tcp_connection

PICKLE_PROTOCOL = 4
# A batch of entries (or one entry) per append_entries message. Entries larger than this are
# split by pysyncobj; at 16 MiB that is a single transaction of more than 20,000 tasks.
BATCH_BYTES = 16 * 1024 * 1024
MESSAGE_COMPRESS_LEVEL = 1


def _compress(data: bytes, level: int = MESSAGE_COMPRESS_LEVEL) -> bytes:
    return zlib.compress(data, MESSAGE_COMPRESS_LEVEL)


def install() -> None:
    """Idempotent: pysyncobj's pickling protocol and its messages' compression."""
    assert PICKLE_PROTOCOL <= pickle.HIGHEST_PROTOCOL
    # A module global in pysyncobj.pickle (no name mangling outside classes).
    setattr(pysyncobj.pickle, "__protocol", PICKLE_PROTOCOL)
    pysyncobj.tcp_connection.zlib = types.SimpleNamespace(
        compress=_compress, decompress=zlib.decompress, error=zlib.error)
