"""The raft journal's on-disk format: checksummed records, and the reader of pysyncobj's own.

Format 2 (shoal's), in a file whose blocks are preallocated, so whatever follows the last
record is zeros:

    header   MAGIC (16) | version u32 = 2 | salt u32 | crc u32 of the 24 bytes before | 0 u32
    record   length u32 | crc u32 | index u64 | term u64 | command
    end      a length of 0 (every append writes 8 zero bytes after its record)

`length` counts index, term and command. `crc` is CRC-32 over the length field and the payload,
seeded with the previous record's crc (the file's random salt for the first), so a record only
verifies in the place it was written after the very records it was written after: stale bytes of
an older, longer log, or of an earlier file on the same blocks, do not pass for entries. A crash
between a write and its fsync can leave a torn or half-written tail; `scan` stops at the first
record that does not verify and says what it dropped.

Format 1 is pysyncobj's FileJournal (no checksums, a last-record offset in the header); it is
read once, with bounds checks, and rewritten in format 2.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

MAGIC = b"SHOAL-RAFT-JRNL\0"
VERSION = 2
HEADER = struct.Struct("<16sIIII")
FIRST_RECORD = HEADER.size
RECORD_HEAD = struct.Struct("<II")  # length, crc
ENTRY_HEAD = struct.Struct("<QQ")   # index, term
END_MARK = b"\0" * RECORD_HEAD.size
MAX_PAYLOAD = 1 << 30  # no raft entry is a gigabyte: a larger length is damage, not data

# pysyncobj's FileJournal (journal format 1)
V1_NAME = b"PYSYNCOBJ"
V1_FIRST_RECORD = 24 + 8 + 4 + 4
V1_LAST_OFFSET_AT = 24 + 8 + 4

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's order


def header(salt: int) -> bytes:
    head = struct.pack("<16sII", MAGIC, VERSION, salt)
    return HEADER.pack(MAGIC, VERSION, salt, zlib.crc32(head), 0)


def read_header(data: bytes, path: str) -> int:
    """The salt of a format-2 header; ValueError naming the file and the fix otherwise."""
    magic, version, salt, crc, _ = HEADER.unpack(data[:HEADER.size])
    if version != VERSION:
        raise ValueError(f"raft journal {path}: format {version} is not one this shoal reads "
                         f"(it reads {VERSION}); run the shoal that wrote it, or move the file "
                         f"aside and restart so this manager catches up from the leader")
    if zlib.crc32(data[:24]) != crc:
        raise ValueError(f"raft journal {path}: its header is damaged (checksum mismatch); "
                         f"move the file aside and restart so this manager catches up from "
                         f"the leader (nothing was changed)")
    return salt


def encode(command: bytes, index: int, term: int, prev_crc: int) -> tuple[bytes, int]:
    """The record for one entry, followed by the end mark, and the record's crc."""
    payload = ENTRY_HEAD.pack(index, term) + bytes(command)
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length, prev_crc))
    return length + struct.pack("<I", crc) + payload + END_MARK, crc


@dataclass
class Damage:
    """A tail that did not verify: where it starts and how much of the file it spans."""
    offset: int
    bytes_dropped: int
    entries_dropped: int  # records found there (by their lengths), the damaged one included
    reason: str


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each entry's record starts
    crcs: list[int] = field(default_factory=list)
    end: int = FIRST_RECORD                           # where the next record goes
    damage: Damage | None = None


def scan(read: Callable[[int, int], bytes], size: int, salt: int) -> Scan:
    """Every record that verifies, from the first on; stops at the end mark or at damage."""
    out = Scan()
    offset, prev_crc = FIRST_RECORD, salt
    while True:
        head = read(offset, RECORD_HEAD.size)
        if len(head) < RECORD_HEAD.size:
            if head.strip(b"\0"):
                out.damage = _damage(read, size, offset, "a record header cut short")
            break
        length, crc = RECORD_HEAD.unpack(head)
        if length == 0:
            if crc:
                out.damage = _damage(read, size, offset, "a damaged end mark")
            break
        reason = _check(read, size, offset, length, crc, prev_crc)
        if reason:
            out.damage = _damage(read, size, offset, reason)
            break
        payload = read(offset + RECORD_HEAD.size, length)
        index, term = ENTRY_HEAD.unpack_from(payload)
        if out.entries and (index != out.entries[-1][1] + 1 or term < out.entries[-1][2]):
            out.damage = _damage(read, size, offset, f"entry {index} (term {term}) does not "
                                                     f"follow entry {out.entries[-1][1]}")
            break
        out.entries.append((payload[ENTRY_HEAD.size:], index, term))
        out.offsets.append(offset)
        out.crcs.append(crc)
        prev_crc = crc
        offset += RECORD_HEAD.size + length
    out.end = offset
    return out


def _check(read, size: int, offset: int, length: int, crc: int, prev_crc: int) -> str:
    if length < ENTRY_HEAD.size or length > MAX_PAYLOAD:
        return f"an impossible record length {length}"
    if offset + RECORD_HEAD.size + length > size:
        return f"a record of {length} bytes cut short by the end of the file"
    payload = read(offset + RECORD_HEAD.size, length)
    if zlib.crc32(payload, zlib.crc32(struct.pack("<I", length), prev_crc)) != crc:
        return "a checksum mismatch"
    return ""


def _damage(read, size: int, offset: int, reason: str) -> Damage:
    """Walk the damaged tail by its (unverified) length fields to say how much it spans."""
    at, records = offset, 0
    while at < size:
        head = read(at, RECORD_HEAD.size)
        if not head.strip(b"\0"):
            break  # zeros: the preallocated rest of the file
        if len(head) < RECORD_HEAD.size:
            at = size
            break
        length, _ = RECORD_HEAD.unpack(head)
        end = at + RECORD_HEAD.size + length
        if ENTRY_HEAD.size <= length <= MAX_PAYLOAD:
            records += 1
        if length < ENTRY_HEAD.size or end > size:
            at = min(size, end if length <= MAX_PAYLOAD else at + RECORD_HEAD.size)
            break
        at = end
    return Damage(offset, at - offset, records, reason)


@dataclass
class V1Scan:
    entries: list[Entry]
    damage: Damage | None


def scan_v1(data: bytes) -> V1Scan:
    """pysyncobj's FileJournal: its records up to the offset its header names, bounds-checked
    (format 1 has no checksums: what is in bounds and framed consistently is taken)."""
    entries: list[Entry] = []
    size = len(data)
    (last,) = struct.unpack_from("<I", data, V1_LAST_OFFSET_AT)
    offset = V1_FIRST_RECORD
    while offset < min(last, size):
        if offset + 4 > size:
            return V1Scan(entries, Damage(offset, size - offset, 1, "a record cut short"))
        (length,) = struct.unpack_from("<I", data, offset)
        end = offset + 4 + length + 4
        if length < ENTRY_HEAD.size or end > size \
                or struct.unpack_from("<I", data, end - 4)[0] != length:
            return V1Scan(entries, Damage(offset, min(last, size) - offset, 1,
                                          "a record whose framing does not match"))
        index, term = ENTRY_HEAD.unpack_from(data, offset + 4)
        entries.append((data[offset + 4 + ENTRY_HEAD.size:end - 4], index, term))
        offset = end
    if last > size:
        return V1Scan(entries, Damage(size, last - size, 0, "a header pointing past the end"))
    return V1Scan(entries, None)
