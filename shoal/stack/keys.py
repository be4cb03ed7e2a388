"""Which keys a Compose file may have, and what shoal does with each.

Every key is one of three kinds. Honoured keys are converted. Keys that change nothing in a swarm
(`container_name`, `build:` beside `image:`) get a one-line warning. Keys whose absence would
change what runs (`privileged: true`, `devices`) are *unsupported*: they refuse the whole deploy
before anything changes, unless `--allow-unsupported`, which drops each with a warning.
"""
from __future__ import annotations

from typing import Any

TOP_LEVEL = ("version", "name", "services", "networks", "volumes", "secrets", "configs",
             "include", "models")

# Keys whose presence changes what runs, and shoal cannot do it: why, per key.
UNSUPPORTED = {
    "privileged": "privileged containers are not run by shoal (use cap_add for what it needs)",
    "devices": "host devices are not passed into tasks",
    "device_cgroup_rules": "host devices are not passed into tasks",
    "gpus": "GPUs are not scheduled",
    "network_mode": "tasks always get their own network namespace (use networks:)",
    "ipc": "tasks always get their own IPC namespace",
    "pid": "tasks always get their own PID namespace",
    "uts": "tasks always get their own UTS namespace",
    "userns_mode": "user namespaces are not configurable",
    "cgroup": "tasks always get their own cgroup namespace",
    "cgroup_parent": "task cgroups are placed by shoal",
    "cpu_shares": "CPU shares are not set (use deploy.resources)",
    "cpu_quota": "CPU quotas are set by deploy.resources.limits.cpus",
    "cpu_period": "CPU quotas are set by deploy.resources.limits.cpus",
    "cpu_rt_runtime": "real-time CPU scheduling is not set",
    "cpu_rt_period": "real-time CPU scheduling is not set",
    "cpu_count": "CPU counts are not set (use deploy.resources)",
    "cpu_percent": "CPU percentages are not set (use deploy.resources)",
    "cpuset": "CPU pinning is not done",
    "blkio_config": "block IO limits are not set",
    "mem_swappiness": "swappiness is not set",
    "memswap_limit": "swap limits are not set",
    "oom_kill_disable": "the OOM killer cannot be turned off",
    "oom_score_adj": "OOM scores are not adjusted",
    "shm_size": "/dev/shm's size is not set (mount a tmpfs at /dev/shm with a size instead)",
    "security_opt": "seccomp, AppArmor and SELinux options are not applied",
    "isolation": "only the default isolation exists on Linux",
    "runtime": "tasks always run with runc",
    "storage_opt": "storage driver options are not set",
    "volumes_from": "tasks do not share their containers' volumes",
    "credential_spec": "credential specs are a Windows feature",
    "mac_address": "MAC addresses are assigned by shoal",
    "domainname": "a NIS domain name is not set",
    "external_links": "containers outside the stack are not linked (use an external network)",
    "post_start": "lifecycle hooks are not run",
    "pre_stop": "lifecycle hooks are not run",
    "extends": "extends is not read: merge files with several -c instead",
    "label_file": "label files are not read",
    "use_api_socket": "the API socket is not given to tasks",
    "provider": "provider services are not run",
    "models": "models are not run",
    "attach": "log attachment is not configurable",
    "develop": "compose watch is not run",
    "annotations": "OCI annotations are not set",
}

# Keys that change nothing in a swarm: a warning says so.
NO_EFFECT = {
    "container_name": "tasks are named by their service, slot and id",
    "expose": "a service's ports are reachable on its networks without it",
    "platform": "the node's platform is used",
    "pull_policy": "the node pulls an image it does not have",
}

SERVICE_KEYS = tuple(sorted({
    "image", "command", "entrypoint", "environment", "env_file", "labels", "deploy", "ports",
    "networks", "volumes", "secrets", "configs", "healthcheck", "user", "working_dir",
    "hostname", "stop_signal", "stop_grace_period", "tty", "stdin_open", "init", "read_only",
    "cap_add", "cap_drop", "sysctls", "ulimits", "dns", "dns_search", "dns_opt", "extra_hosts",
    "group_add", "tmpfs", "logging", "depends_on", "cpus", "mem_limit", "mem_reservation",
    "pids_limit", "restart", "build", "links", "profiles", "scale", *UNSUPPORTED, *NO_EFFECT}))
DEPLOY_KEYS = ("mode", "replicas", "endpoint_mode", "labels", "resources", "restart_policy",
               "update_config", "rollback_config", "placement")


def is_set(value: Any) -> bool:
    """Whether a key's value asks for something (`privileged: false` asks for nothing)."""
    return value not in (None, False, "", [], {}, 0)
