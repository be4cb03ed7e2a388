"""A stack plan applied to the swarm through the control API, as `docker stack deploy` does, and
the stack's other verbs (ls, services, ps, rm, rollback).

A deploy first reads everything and refuses before any change (a missing external object, a
secret whose content changed, a spec the managers would refuse). Then it creates what is new and
updates what changed; services whose spec is unchanged are not touched, so their tasks keep
running. If a step still fails, what this deploy created is removed again and what it updated
is rolled back, so a failed deploy leaves the stack as it was.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol

from common import errors, strict
from common.model import ServiceSpec
from manager.specs.services import validate_service_spec
from common.apipath import api_path
from shoal.stack.convert import NAMESPACE_LABEL
from shoal.stack.plan import DataPlan, StackPlan
from shoal.stack.problems import ComposeError, Problem

# A secret's content is never readable through the API, so a redeploy could not tell that the
# file changed. The stack keeps a salted, slow digest of it as a label: anyone who can read the
# label can already run a task that mounts the secret, so it reveals nothing more.
CONTENT_LABEL = "com.shoal.stack.content"


def content_digest(data: bytes, salt: Optional[bytes] = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(data, salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt:{salt.hex()}:{digest.hex()}"


def same_content(label: str, data: bytes) -> bool:
    try:
        kind, salt, _ = label.split(":")
        if kind != "scrypt":
            return False
        return hmac.compare_digest(content_digest(data, bytes.fromhex(salt)), label)
    except ValueError:
        return False


class Cli(Protocol):
    """The one call the stack verbs make: a request to the local daemon's API."""

    def call(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
             timeout: float = 60.0) -> Any: ...


def in_stack(obj: dict, namespace: str) -> bool:
    return obj["spec"].get("labels", {}).get(NAMESPACE_LABEL) == namespace


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)     # "service web", "network front", ...
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    service_ids: dict[str, str] = field(default_factory=dict)  # name -> id of each service


class Deployer:
    def __init__(self, cli: Cli, plan: StackPlan, echo: Callable[[str], None],
                 registry_auth: Callable[[str], dict] = lambda image: {},
                 resolve_image: Callable[[str, Optional[str]], str] = lambda image, cur: image,
                 ) -> None:
        self.cli = cli
        self.plan = plan
        self.echo = echo
        # image -> what a create or update body adds for --with-registry-auth
        self.registry_auth = registry_auth
        # (the file's image, the running service's or None) -> the image to send: pinned to
        # its digest as --resolve-image says (shoal/cli/resolve.py stack_image)
        self.resolve_image = resolve_image
        self._undo: list[Callable[[], None]] = []

    # -- reading and checking, before any change ----------------------------------------------
    def _listing(self, kind: str) -> dict[str, dict]:
        return {o["spec"]["name"]: o for o in self.cli.call("GET", api_path(kind))}

    def preflight(self) -> tuple[dict, dict, dict, dict]:
        problems: list[Problem] = []
        for name, spec in self.plan.services.items():
            try:
                validate_service_spec(strict.decode(ServiceSpec, asdict(spec)))
            except errors.ShoalError as exc:
                path = self.plan.service_paths[name]
                problems.append(Problem(path, f"the managers would refuse it: {exc.message}",
                                        self.plan.marks.at(path)))
        networks, secrets = self._listing("networks"), self._listing("secrets")
        configs, services = self._listing("configs"), self._listing("services")
        for net in self.plan.networks.values():
            if net.external and net.name not in networks:
                problems.append(Problem(net.path, f"external network {net.name!r} does not exist: "
                                        f"create it with 'shoal network create {net.name}'"))
            elif not net.external and net.name in networks and \
                    not in_stack(networks[net.name], self.plan.namespace):
                problems.append(Problem(net.path, f"network {net.name!r} exists and is not part "
                                        "of this stack: remove it, or declare it external"))
        for kind, plans, existing in (("secret", self.plan.secrets, secrets),
                                      ("config", self.plan.configs, configs)):
            for obj in plans.values():
                have = existing.get(obj.name)
                if obj.data is None:
                    if have is None:
                        problems.append(Problem(obj.path, f"external {kind} {obj.name!r} does not "
                                                f"exist: create it with 'shoal {kind} create'"))
                elif have is not None and not self._same_data(kind, have, obj):
                    problems.append(Problem(obj.path, f"{kind} {obj.name!r} exists with other "
                                            f"content, and {kind}s cannot change: give the new "
                                            f"content a new name (name: {obj.name}_v2)"))
        for name in self.plan.services:
            have = services.get(name)
            if have is not None and not in_stack(have, self.plan.namespace):
                problems.append(Problem(self.plan.service_paths[name], f"service {name!r} exists "
                                        "and is not part of this stack"))
        if problems:
            marked = [p if p.mark else Problem(p.path, p.message, self.plan.marks.at(p.path))
                      for p in problems]
            raise ComposeError(marked, "the stack cannot be deployed as it is; nothing was "
                               "changed:")
        return networks, secrets, configs, services

    @staticmethod
    def _same_data(kind: str, have: dict, obj: DataPlan) -> bool:
        if kind == "config":
            return base64.b64decode(have["spec"]["data"]) == obj.data
        label = have["spec"].get("labels", {}).get(CONTENT_LABEL, "")
        return same_content(label, obj.data or b"")

    # -- applying -----------------------------------------------------------------------------
    def deploy(self, prune: bool) -> Outcome:
        networks, secrets, configs, services = self.preflight()
        # every service's credentials before any change: a missing login stops nothing halfway
        auths = {name: self.registry_auth(spec.task_template.container.image)
                 for name, spec in self.plan.services.items()}
        images = self._pinned_images(services)
        out = Outcome()
        try:
            self._apply(networks, secrets, configs, services, out, prune, auths, images)
        except BaseException:
            self.echo("deploy failed: undoing what it changed")
            for undo in reversed(self._undo):
                try:
                    undo()
                except errors.ShoalError as exc:  # keep undoing the rest; say what stayed
                    self.echo(f"  could not undo a step: {exc.message}")
            raise
        return out

    def _pinned_images(self, services: dict) -> dict[str, str]:
        """Each service's image as it will be sent, looked up before any change: an auth
        failure stops the deploy before it changed anything."""
        images = {}
        for name, spec in self.plan.services.items():
            have = services.get(name)
            current = have["spec"]["task_template"]["container"]["image"] if have else None
            images[name] = self.resolve_image(spec.task_template.container.image, current)
        return images

    def _apply(self, networks: dict, secrets: dict, configs: dict, services: dict,
               out: Outcome, prune: bool, auths: dict[str, dict],
               images: dict[str, str]) -> None:
        for net in self.plan.networks.values():
            if net.external or net.name in networks:
                continue
            self.echo(f"Creating network {net.name}")
            created = self.cli.call("POST", "/networks/create", {"spec": net.spec})
            self._undo.append(lambda i=created["id"]: self.cli.call("DELETE", api_path("networks", i)))
            out.created.append(f"network {net.name}")
        for kind, plans, existing in (("secrets", self.plan.secrets, secrets),
                                      ("configs", self.plan.configs, configs)):
            for obj in plans.values():
                if obj.data is None or obj.name in existing:
                    continue
                labels = dict(obj.labels)
                if kind == "secrets":
                    labels[CONTENT_LABEL] = content_digest(obj.data)
                self.echo(f"Creating {kind[:-1]} {obj.name}")
                created = self.cli.call("POST", api_path(kind, "create"), {
                    "name": obj.name, "labels": labels,
                    "data": base64.b64encode(obj.data).decode("ascii")})
                self._undo.append(lambda k=kind, i=created["id"]: self.cli.call("DELETE", api_path(k, i)))
                out.created.append(f"{kind[:-1]} {obj.name}")
        net_names = {n["id"]: n["spec"]["name"] for n in self.cli.call("GET", "/networks")}
        for name, spec in self.plan.services.items():
            body = asdict(spec)
            body["task_template"]["container"]["image"] = images[name]
            have = services.get(name)
            if have is None:
                self.echo(f"Creating service {name}")
                created = self.cli.call("POST", "/services/create", {"spec": body, **auths[name]})
                self._undo.append(lambda i=created["id"]: self.cli.call("DELETE", api_path("services", i)))
                out.created.append(f"service {name}")
                out.service_ids[name] = created["id"]
                continue
            out.service_ids[name] = have["id"]
            if comparable(have["spec"], net_names) == comparable(body, net_names):
                out.unchanged.append(f"service {name}")
                continue
            self.echo(f"Updating service {name}")
            self.cli.call("POST", api_path("services", have["id"], "update"),
                          {"spec": body, **auths[name]}, params={"version": str(have["meta"]["version"])})
            self._undo.append(lambda i=have["id"]: self.cli.call("POST", api_path("services", i, "rollback")))
            out.updated.append(f"service {name}")
        if prune:
            for name, have in services.items():
                if in_stack(have, self.plan.namespace) and name not in self.plan.services:
                    self.echo(f"Removing service {name}")
                    self.cli.call("DELETE", api_path("services", have["id"]))
                    out.removed.append(f"service {name}")


def comparable(spec: dict, net_names: dict[str, str]) -> dict:
    """A spec as the managers keep it and as the file says it, made comparable: they store
    network ids and resolved secret and config ids where the file has names."""
    spec = copy.deepcopy(spec)
    task = spec.get("task_template", {})
    for att in task.get("networks", []):
        att["target"] = net_names.get(att["target"], att["target"])
    container = task.get("container", {})
    for ref in container.get("secrets", []):
        ref["secret_id"] = ""
    for ref in container.get("configs", []):
        ref["config_id"] = ""
    return spec


# -- the other verbs ------------------------------------------------------------------------
def stack_services(cli: Cli, namespace: str) -> list[dict]:
    return [s for s in cli.call("GET", "/services") if in_stack(s, namespace)]


def stacks(cli: Cli) -> dict[str, int]:
    """Stack name -> number of services, for `stack ls`."""
    out: dict[str, int] = {}
    for s in cli.call("GET", "/services"):
        ns = s["spec"].get("labels", {}).get(NAMESPACE_LABEL)
        if ns:
            out[ns] = out.get(ns, 0) + 1
    return out


def remove_stack(cli: Cli, namespace: str, echo: Callable[[str], None],
                 timeout: float = 120.0) -> bool:
    """Services first; their networks, secrets and configs once no task of them is left (the
    managers refuse to remove a network a service still uses). Named volumes stay, as Docker's."""
    services = stack_services(cli, namespace)
    found = bool(services)
    for s in services:
        echo(f"Removing service {s['spec']['name']}")
        cli.call("DELETE", api_path("services", s["id"]))
    deadline = time.monotonic() + timeout
    ids = {s["id"] for s in services}
    while ids and time.monotonic() < deadline:
        left = [t for t in cli.call("GET", "/tasks") if t.get("service_id") in ids]
        if not left:
            break
        time.sleep(0.2)
    for kind in ("secrets", "configs", "networks"):
        for obj in cli.call("GET", api_path(kind)):
            if not in_stack(obj, namespace):
                continue
            found = True
            echo(f"Removing {kind[:-1]} {obj['spec']['name']}")
            while True:
                try:
                    cli.call("DELETE", api_path(kind, obj["id"]))
                    break
                except errors.Conflict:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
    return found


def rollback_stack(cli: Cli, namespace: str, echo: Callable[[str], None]) -> list[str]:
    rolled = []
    for s in stack_services(cli, namespace):
        name = s["spec"]["name"]
        if not s.get("previous_spec"):
            echo(f"{name}: no previous spec, left as it is")
            continue
        echo(f"Rolling back service {name}")
        cli.call("POST", api_path("services", s["id"], "rollback"))
        rolled.append(s["id"])
    return rolled


def wait_running(cli: Cli, service_ids: list[str], timeout: float,
                 echo: Callable[[str], None]) -> None:
    """Until every service of the deploy converged: replicas running (jobs: completed), no
    update in progress, no dependency awaited; says which services have not."""
    deadline = time.monotonic() + timeout
    pending = list(service_ids)
    last = ""
    while pending:
        waiting: dict[str, str] = {}
        for sid in pending:
            svc = cli.call("GET", api_path("services", sid))
            rs = svc["replicas_status"]
            job = svc["spec"]["mode"]["mode"].endswith("-job")
            done = (rs["completed"] if job else rs["running"]) >= rs["desired"]
            updating = (svc.get("update_status") or {}).get("state") in ("updating",
                                                                          "rollback_started")
            wait = svc.get("dependency_wait")
            if not done or updating or wait:
                waiting[sid] = svc["spec"]["name"] + (f" ({wait})" if wait else "")
        pending = list(waiting)
        if not pending:
            return
        summary = f"waiting for {len(waiting)} service(s): {', '.join(sorted(waiting.values()))}"
        if summary != last:
            echo(summary)
            last = summary
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"the stack did not converge in {timeout:g}s: "
                                     f"{', '.join(sorted(waiting.values()))} (see 'shoal stack ps')")
        time.sleep(0.2)
