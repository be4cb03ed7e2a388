"""common.linux: the mount table parser (octal escapes, non-ASCII, stray whitespace), real
tmpfs mounts at awkward paths, errno names in errors, the subreaper, and pid liveness that
survives pid reuse and odd process names. The mount and subreaper tests need root."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common import linux

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, umount)")

# Every byte the kernel escapes in mountinfo (space, tab, newline, backslash), non-ASCII, and
# bytes that str.split() would take for whitespace though the kernel leaves them raw.
AWKWARD = {
    "space": "a b",
    "tab": "a\tb",
    "newline": "a\nb",
    "backslash": "a\\b",
    "escape-lookalike": "a\\040b",          # a backslash followed by "040", not a space
    "non-ascii": "café-日本",
    "unicode-space": "a\u00a0b\u2028c",       # NBSP, LINE SEPARATOR
    "ascii-separators": "a\x0bb\x0cc\x1cd",  # VT, FF, FS
    "all": "tab\there\\back é",
}


# ---- the parser, on hand-written lines --------------------------------------------------------
def test_a_hand_written_line_with_every_escape():
    line = (rb"36 35 98:0 /r\040oot /mnt/a\011b\134c\012d\040\303\251\134040 rw,noatime "
            rb"shared:1 master:2 - ext4 /dev/my\040disk rw,errors=continue" b"\n")
    m = linux.parse_mountinfo_line(line)
    assert m == linux.MountInfo(
        mount_id=36, parent_id=35, major=98, minor=0, root="/r oot",
        mount_point="/mnt/a\tb\\c\nd é\\040", options="rw,noatime",
        optional=("shared:1", "master:2"), fs_type="ext4", source="/dev/my disk",
        super_options="rw,errors=continue")


def test_no_optional_fields_and_raw_bytes_round_trip():
    # \xff is no UTF-8: it comes back as a surrogate, and os.fsencode gives the byte back
    line = b"1 0 0:5 / /x\xff\xc2\xa0y\x0bz rw - tmpfs tmpfs rw,size=4k"
    m = linux.parse_mountinfo_line(line)
    assert m.optional == () and m.fs_type == "tmpfs" and m.super_options == "rw,size=4k"
    assert os.fsencode(m.mount_point) == b"/x\xff\xc2\xa0y\x0bz"
    assert m.mount_point.endswith("\u00a0y\x0bz")


def test_only_octal_escapes_of_a_byte_are_unescaped():
    assert linux.unescape(rb"a\134b\040c\400d\08e\\") == "a\\b c\\400d\\08e\\\\"


def test_a_line_that_is_none_is_refused():
    for bad in (b"", b"1 2 3", b"1 2 0:1 / /x rw shared:1 ext4 src rw", b"x y 0:1 / /a rw - t s o"):
        with pytest.raises(ValueError):
            linux.parse_mountinfo_line(bad)


def test_the_live_table_parses():
    table = linux.mountinfo()
    assert any(m.mount_point == "/" for m in table)
    assert any(m.mount_point == "/proc" and m.fs_type == "proc" for m in table)
    assert any(m.mount_point == "/" for m in linux.mountinfo(os.getpid()))
    assert linux.is_mountpoint("/proc") and not linux.is_mountpoint("/proc/self/fd")


# ---- real mounts at awkward paths -------------------------------------------------------------
@needs_root
@pytest.mark.parametrize("name", list(AWKWARD), ids=list(AWKWARD))
def test_tmpfs_at_an_awkward_path(tmp_path, name):
    target = tmp_path / AWKWARD[name]
    target.mkdir()
    linux.mount("tmpfs", target, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=64k,mode=0700")
    try:
        found = [m for m in linux.mountinfo() if m.mount_point == str(target)]
        assert [(m.fs_type, m.source) for m in found] == [("tmpfs", "tmpfs")]
        assert "size=64k" in found[0].super_options and "nosuid" in found[0].options
        assert linux.is_mountpoint(target) and linux.is_mountpoint(str(target) + "/")
        assert not linux.is_mountpoint(tmp_path)
        (target / "f").write_text("x")
    finally:
        linux.umount(target)
    assert not linux.is_mountpoint(target) and not (target / "f").exists()
    with pytest.raises(OSError) as info:
        linux.umount(target)
    assert info.value.errno == errno.EINVAL
    assert str(info.value).endswith(f"umount {target}: EINVAL (Invalid argument)")


@needs_root
def test_errors_name_the_errno_and_the_path(tmp_path):
    target = tmp_path / "busy é"
    target.mkdir()
    linux.mount("tmpfs", target, "tmpfs", 0, "size=64k")
    try:
        with open(target / "open-file", "w"):
            with pytest.raises(OSError) as info:
                linux.umount(target)
            assert info.value.errno == errno.EBUSY
            assert f"umount {target}: EBUSY (Device or resource busy)" in str(info.value)
    finally:
        linux.umount(target, linux.MNT_DETACH)
    with pytest.raises(FileNotFoundError, match="mount .*/missing: ENOENT"):
        linux.mount("tmpfs", tmp_path / "missing", "tmpfs")
    with pytest.raises(OSError, match="ENODEV"):
        linux.mount("none", target, "no-such-fs-type")


# ---- processes --------------------------------------------------------------------------------
def test_stat_parsing_takes_comm_up_to_the_last_paren():
    rest = " ".join(["S", "4321"] + ["0"] * 17 + ["987654"] + ["0"] * 10)
    st = linux.parse_proc_stat(f"1234 (a) (b) Z 1 (c) {rest}\n".encode())
    assert st == linux.ProcStat(comm="a) (b) Z 1 (c", state="S", ppid=4321, start_time=987654)
    for bad in (b"", b"1234 (no end S 1", b"(x) S 1 2", b"12 (x) S"):
        with pytest.raises(ValueError):
            linux.parse_proc_stat(bad)


@pytest.fixture
def oddly_named_child():
    """A child whose comm holds ") (" and a fake state: a parser that splits at the first ')'
    or at every space reads the wrong fields."""
    comm = "x) Z 1 (y) 2 (z"[:15]
    child = subprocess.Popen(
        [sys.executable, "-c", "import ctypes, sys\n"
         f"ctypes.CDLL(None).prctl({linux.PR_SET_NAME}, {comm.encode()!r}, 0, 0, 0)\n"
         "print('ready', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    yield child, comm
    child.kill()
    child.wait()


def _uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")) + 1


def test_pid_liveness_with_an_odd_comm_and_a_reused_pid(oddly_named_child):
    child, comm = oddly_named_child
    assert Path(f"/proc/{child.pid}/comm").read_text() == comm + "\n"
    st = linux.proc_stat(child.pid)
    assert st is not None and st.comm == comm and st.ppid == os.getpid() and st.state in "RS"
    start = linux.pid_start_time(child.pid)
    assert linux.pid_start_time(os.getpid()) <= start <= _uptime_ticks()
    assert linux.pid_alive(child.pid) and linux.pid_alive(child.pid, start)
    # the same pid with another start time: another process that got the pid since
    assert not linux.pid_alive(child.pid, start + 1)
    assert not linux.pid_alive(child.pid, start - 1)

    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
    assert linux.proc_stat(child.pid).state == "Z"
    assert not linux.pid_alive(child.pid) and not linux.pid_alive(child.pid, start)
    assert linux.pid_start_time(child.pid) == start  # a zombie keeps its start time
    child.wait()
    assert linux.pid_start_time(child.pid) is None and not linux.pid_alive(child.pid)


def test_no_pid_is_not_alive():
    assert not linux.pid_alive(None) and not linux.pid_alive(0) and not linux.pid_alive(-1)
    assert linux.proc_stat(0) is None and linux.pid_start_time(-5) is None


def _orphan() -> int:
    """A `sleep` whose parent shell has already exited: reparented to the nearest subreaper."""
    out = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


@needs_root
def test_subreaper_receives_orphans():
    linux.become_subreaper()
    try:
        orphan = _orphan()
        try:
            assert linux.proc_stat(orphan).ppid == os.getpid()
        finally:
            os.kill(orphan, signal.SIGKILL)
            os.waitpid(orphan, 0)
    finally:
        linux.become_subreaper(False)
    orphan = _orphan()
    try:
        assert linux.proc_stat(orphan).ppid != os.getpid()
    finally:
        os.kill(orphan, signal.SIGKILL)
