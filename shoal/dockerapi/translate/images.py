"""A node's image (worker/images' Image record) as Docker's ImageSummary (GET /images/json) and
image inspect (GET /images/{name}/json)."""
from __future__ import annotations

import datetime
from typing import Optional

from worker.images import Image

from shoal.dockerapi.translate.values import ZERO_TIME


def repo_digests(image: Image, manifests: list[str]) -> list[str]:
    """`NAME@DIGEST` for each name of the image and each manifest it came through."""
    names = sorted({_repository(r) for r in image.refs})
    return [f"{n}@{d}" for n in names for d in manifests]


def _repository(ref: str) -> str:
    """A reference without its tag (the colon after the last slash; a host's port stays)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def unix_time(created: str) -> int:
    """The image config's RFC 3339 `created` as Unix seconds (0 when absent or unreadable)."""
    parsed = _parse_rfc3339(created)
    return int(parsed.timestamp()) if parsed is not None else 0


def _parse_rfc3339(text: str) -> Optional[datetime.datetime]:
    if not text:
        return None
    t = text.strip().replace("z", "Z")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    # Python reads at most microseconds: Go writes up to nanoseconds.
    head, dot, rest = t.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        t = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        parsed = datetime.datetime.fromisoformat(t)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def summary(image: Image, manifests: list[str]) -> dict:
    config = image.config or {}
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": list(image.refs),
        "RepoDigests": repo_digests(image, manifests),
        "Created": unix_time(image.created),
        "Size": image.size,
        "SharedSize": -1,
        "Labels": dict(config.get("Labels") or {}),
        "Containers": -1,
    }


def inspect(image: Image, manifests: list[str]) -> dict:
    config = image.config or {}
    return {
        "Id": image.id,
        "RepoTags": list(image.refs),
        "RepoDigests": repo_digests(image, manifests),
        "Parent": "",
        "Comment": "",
        "Created": image.created or ZERO_TIME,
        "DockerVersion": "",
        "Author": "",
        "Config": _config(config),
        "Architecture": image.architecture,
        "Os": image.os or "linux",
        "Size": image.size,
        # shoal's layers are shared, unpacked directories that overlayfs stacks per container.
        "GraphDriver": {"Name": "overlay", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(image.layers)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def _config(config: dict) -> dict:
    """The image config's runtime part with the keys Docker's inspect always shows (those it
    leaves out when empty, omitempty, only when set)."""
    out = {
        "Hostname": "", "Domainname": "", "User": config.get("User", ""),
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
        "ExposedPorts": config.get("ExposedPorts"),
        "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "Env": list(config.get("Env") or []),
        "Cmd": config.get("Cmd"),
        "Healthcheck": config.get("Healthcheck"),
        "Image": "",
        "Volumes": config.get("Volumes"),
        "WorkingDir": config.get("WorkingDir", ""),
        "Entrypoint": config.get("Entrypoint"),
        "OnBuild": config.get("OnBuild"),
        "Labels": config.get("Labels"),
        "StopSignal": config.get("StopSignal"),
    }
    return {k: v for k, v in out.items()
            if v is not None or k not in ("ExposedPorts", "Healthcheck", "StopSignal")}
