"""Linux plumbing, written once: libc, mount/umount, the mount table, the child subreaper and
process liveness that survives pid reuse.

Paths go to the kernel as bytes (os.fsencode) and come back from /proc decoded as UTF-8 with
surrogateescape (os.fsdecode's rule), so any path the file system can hold round-trips, even one
that is not valid UTF-8.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
from dataclasses import dataclass

AnyPath = str | bytes | os.PathLike

# <sys/mount.h>
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MNT_DETACH = 2
# <linux/prctl.h>
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

# The symbols this process already has (libc among them): ctypes.util.find_library would run
# ldconfig or a compiler at import, and every CLI command imports this module through the lab.
libc = ctypes.CDLL(None, use_errno=True)


def _errno_error(what: str, path: AnyPath) -> OSError:
    """An OSError for the errno the last libc call left, naming the call, the path and the
    errno by its symbol (EBUSY says more in a log than "[Errno 16]" alone)."""
    e = ctypes.get_errno()
    name = errno.errorcode.get(e, str(e))
    # OSError(e, ...) is the errno's own subclass (ENOENT: FileNotFoundError, ...)
    return OSError(e, f"{what} {os.fsdecode(path)}: {name} ({os.strerror(e)})")


# ---- mount / umount ---------------------------------------------------------------------------
def mount(source: AnyPath, target: AnyPath, fstype: str | bytes | None, flags: int = 0,
          data: str | bytes | None = None) -> None:
    """mount(2); OSError "mount TARGET: ENAME (text)" on failure."""
    fs = os.fsencode(fstype) if fstype is not None else None
    opts = os.fsencode(data) if data is not None else None
    if libc.mount(os.fsencode(source), os.fsencode(target), fs, ctypes.c_ulong(flags),
                  ctypes.c_char_p(opts)) != 0:
        raise _errno_error("mount", target)


def umount(target: AnyPath, flags: int = 0) -> None:
    """umount2(2); OSError "umount TARGET: ENAME (text)" on failure (EINVAL: not a mount
    point, ENOENT: no such path, EBUSY: in use)."""
    if libc.umount2(os.fsencode(target), ctypes.c_int(flags)) != 0:
        raise _errno_error("umount", target)


# ---- the mount table --------------------------------------------------------------------------
@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo (proc(5)), with every path field unescaped."""
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str            # the directory of the file system mounted here
    mount_point: str     # relative to the reading process's root
    options: str         # per-mount options (rw,nosuid,...)
    optional: tuple[str, ...]  # shared:N, master:N, propagate_from:N, unbindable
    fs_type: str
    source: str
    super_options: str   # per-superblock options


# The kernel writes these fields through seq_escape: only space, tab, newline and backslash
# become \ooo (three octal digits); every other byte, non-ASCII included, is written raw.
_OCTAL = re.compile(rb"\\([0-3][0-7]{2})")


def unescape(field: bytes) -> str:
    """A mountinfo field as a str: every \\ooo escape made its byte again, then the bytes
    decoded as UTF-8 with surrogateescape (unescaping bytes first keeps multi-byte characters
    whole)."""
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field)
    return raw.decode("utf-8", "surrogateescape")


def parse_mountinfo_line(line: bytes | str) -> MountInfo:
    """One mountinfo line; ValueError if it is not one."""
    if isinstance(line, str):
        line = line.encode("utf-8", "surrogateescape")
    # Split on the space byte only: str.split() would also split at bytes and characters the
    # kernel leaves raw (\v, \f, \x1c-\x1f, U+0085, U+00A0, U+2028, ...).
    fields = line.rstrip(b"\n").split(b" ")
    try:
        sep = fields.index(b"-", 6)
        major, minor = fields[2].split(b":")
        return MountInfo(
            mount_id=int(fields[0]), parent_id=int(fields[1]), major=int(major),
            minor=int(minor), root=unescape(fields[3]), mount_point=unescape(fields[4]),
            options=unescape(fields[5]), optional=tuple(unescape(f) for f in fields[6:sep]),
            fs_type=unescape(fields[sep + 1]), source=unescape(fields[sep + 2]),
            super_options=unescape(fields[sep + 3]) if len(fields) > sep + 3 else "")
    except (ValueError, IndexError):
        raise ValueError(f"not a mountinfo line: {line!r}") from None


def parse_mountinfo(data: bytes | str) -> list[MountInfo]:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return [parse_mountinfo_line(line) for line in data.split(b"\n") if line]


def mountinfo(pid: int | str = "self") -> list[MountInfo]:
    """The mount table as the process ``pid`` sees it (its mount namespace and root)."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return parse_mountinfo(f.read())


def is_mountpoint(path: AnyPath) -> bool:
    """Whether something is mounted at ``path`` (absolute, as the kernel names it: no symlinks).

    Unlike os.path.ismount, this sees a directory bind-mounted onto itself and a mount of the
    same file system as its parent."""
    target = os.path.normpath(os.fsdecode(path))
    return any(m.mount_point == target for m in mountinfo())


# ---- processes --------------------------------------------------------------------------------
def become_subreaper(on: bool = True) -> None:
    """Make this process the child subreaper: orphaned descendants (a container's init once
    `runc create` exits) are reparented to it, not to pid 1. ``on=False`` gives that up."""
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER): {errno.errorcode.get(e, e)} "
                         f"({os.strerror(e)})")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that shoal reads (proc(5))."""
    comm: str
    state: str        # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    start_time: int   # clock ticks after boot: with the pid, it names one process


def parse_proc_stat(data: bytes) -> ProcStat:
    """/proc/<pid>/stat's contents; ValueError if malformed.

    comm (field 2) is in parentheses and may itself hold spaces and parentheses: it ends at the
    LAST ')', and the other fields follow, separated by single spaces."""
    try:
        head, _, tail = data.partition(b" (")
        comm, paren, rest = tail.rpartition(b")")
        fields = rest.split()
        if not paren or not head.isdigit():
            raise ValueError
        return ProcStat(comm=comm.decode("utf-8", "surrogateescape"), state=fields[0].decode(),
                        ppid=int(fields[1]), start_time=int(fields[19]))
    except (ValueError, IndexError, UnicodeDecodeError):
        raise ValueError(f"not a /proc/<pid>/stat: {data[:200]!r}") from None


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when there is no such process (any more)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return parse_proc_stat(f.read())
    except (OSError, ValueError):
        return None


def pid_start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot), None if it is gone. A pid can be
    reused at once; the pair (pid, start time) cannot."""
    st = proc_stat(pid)
    return st.start_time if st is not None else None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """The process exists, is not a zombie waiting to be reaped, and, when ``start`` is given,
    is the very process that started then (not another one that got its pid since)."""
    st = proc_stat(pid) if pid else None
    if st is None or st.state in ("Z", "X", "x"):
        return False
    return start is None or st.start_time == start
