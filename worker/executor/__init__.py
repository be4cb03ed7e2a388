"""Containers, run by an OCI runtime (`runc`), with no helper process per container, except a
`cat` that copies a tty container's terminal into its log (console.py).

Under the executor's root:

    containers/<id>/         one bundle per container (the id is the task id)
        config.json          the OCI runtime spec runc reads
        shoal.json           what shoal asked for (the ContainerConfig, image id, cgroup path)
        state.json           the init's pid and start time, and whether it was started
        exit.json            how it ended, once known
        rootfs/              overlayfs: the image's layers + upper/ (+ work/)
        stdout.log stderr.log  the container's own stdio, written by the container directly
        container.log        the same lines as JSON {"t": epoch, "s": stream, "l": text}
        container.log.1..N   rotated logs (json-file max-size / max-file)
        logpos.json          how far container.log has consumed stdout.log / stderr.log
        console.json         the tty pump's pid and start time (tty containers)
        stdin.fifo           the kept-open stdin of an open_stdin container
    volumes/<name>/          named local volumes (kept when containers go; worker/volumes.py):
        _data/               what containers mount
        opts.json            driver, options, labels (0600)
    volumes/.layout.json     volumes made by older code, whose data is <name>/ itself
    runc-state/              runc's --root: several daemons on one machine never see each
                             other's containers

Lifecycle: `runc create` (stdio straight to the log files, so the container never depends on
this daemon being alive), `runc start`, exit noticed via a pidfd, `runc delete`. The daemon is
the child subreaper: when `runc create` exits, the container's init is reparented to us, so we
collect its exact exit status with waitpid on that one pid (never waitpid(-1): asyncio's child
watcher owns our other children). After a daemon restart the inits belong to someone else; they
are adopted (watched, their logs tailed), but their exit codes can no longer be known.

Log timestamps are taken when the daemon reads a line from stdout.log/stderr.log (polled every
50-250 ms while the container runs): lines written while shoald was down get the time it read
them after restarting.

The modules, each depending only on those below it (lifecycle imports the others, never the
reverse):

    lifecycle   the Executor: create, start, restart, stop, kill, remove, adopt, close, wait,
                exec, logs; ExecTimeout
    exits       exit watching: the init's pidfd, its status by waitpid, orphaned zombies
    logs        copying stdout.log/stderr.log into container.log; its records, tail offsets
    runc        running the runtime against our --root, and its error messages
    console     a tty container's terminal: the console socket and the pump into its log
    ocispec     the OCI runtime spec: command, user (looked up in the image), env, mounts,
                namespaces, limits; signals and the stop grace period (pure functions)
    rootfs      the overlayfs root filesystem, mounted and unmounted
    top         `container top`: the cgroup's pids, the host's ps narrowed to them
    stats       `container stats`: cgroup counters and /proc/net/dev, docker's figures
    cgroups     the per-daemon cgroup prefix, cgroup mounts, swap accounting, OOM kill counts
    container   the records: ContainerConfig, ExitInfo, ContainerInfo, LogLine, and _Container
                (what is tracked per container) with its state files
"""
from __future__ import annotations

# What other modules and the tests import from `worker.executor`.
from worker.executor.cgroups import cgroup_mounts, cgroup_prefix_for
from worker.executor.container import ContainerConfig, ContainerInfo, ExitInfo, LogLine
from worker.executor.exits import _orphan_zombies
from worker.executor.lifecycle import ExecTimeout, Executor
from worker.executor.ocispec import _signal, in_rootfs, merge_env, resolve_user, stop_grace
from worker.executor.rootfs import _mount_overlay, _unmount

__all__ = ["ContainerConfig", "ContainerInfo", "ExecTimeout", "Executor", "ExitInfo", "LogLine",
           "cgroup_mounts", "cgroup_prefix_for", "in_rootfs", "merge_env", "resolve_user",
           "stop_grace",
           # private, imported by the tests
           "_mount_overlay", "_orphan_zombies", "_signal", "_unmount"]
