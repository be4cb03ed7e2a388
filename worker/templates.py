"""Swarm's service templates, expanded where they can be: on the node that runs the task.

The managers check the syntax when a service is created (common.templates); only the node
knows its own hostname and platform, so the values go in here, just before the task's
container is configured.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Optional

from common import templates
from common.model import Platform, Task


def template_values(task: Task, node_id: str, hostname: str, platform: Platform,
                    service_labels: Optional[Mapping[str, str]] = None
                    ) -> dict[str, templates.Value]:
    """The placeholders' values for this task on this node (Swarm's template context)."""
    node = task.node_id or node_id
    return {
        "Service.ID": task.service_id,
        "Service.Name": task.service_name,
        "Service.Labels": dict(service_labels or {}),
        "Node.ID": node,
        "Node.Hostname": hostname,
        "Node.Platform.OS": platform.os,
        "Node.Platform.Architecture": platform.architecture,
        "Task.ID": task.id,
        "Task.Name": task.name,
        # a global task has no slot: Swarm puts the node id in its place (as in its name)
        "Task.Slot": str(task.slot) if task.slot else node,
    }


def expand_container_spec(task: Task, node_id: str, hostname: str, platform: Platform,
                          service_labels: Optional[Mapping[str, str]] = None) -> Task:
    """The task with its container spec's templates expanded (env values, hostname, mount
    sources and targets, volume labels); the very same task when none of them is a template.
    InvalidArgument, naming the field, for a template that cannot be expanded."""
    c = task.spec.container
    expanded = templates.expand_container_spec(
        c, template_values(task, node_id, hostname, platform, service_labels))
    if expanded is c:
        return task
    return replace(task, spec=replace(task.spec, container=expanded))

