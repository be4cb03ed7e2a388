"""What a stack deploy will create: the result of converting a project, the input of deploying."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from common.model import ServiceSpec
from shoal.stack.problems import Marks, Path, Problem


@dataclass
class DataPlan:
    """A secret or a config of the stack: made from a file, text or a variable, or external."""
    key: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    data: Optional[bytes] = None   # None: external, must exist
    path: Path = ()


@dataclass
class NetworkPlan:
    key: str
    name: str
    external: bool = False
    spec: dict = field(default_factory=dict)   # NetworkSpec's fields, for create
    path: Path = ()


@dataclass
class StackPlan:
    namespace: str
    services: dict[str, ServiceSpec] = field(default_factory=dict)   # full name -> spec
    service_paths: dict[str, Path] = field(default_factory=dict)
    networks: dict[str, NetworkPlan] = field(default_factory=dict)   # compose key -> plan
    secrets: dict[str, DataPlan] = field(default_factory=dict)
    configs: dict[str, DataPlan] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)            # compose key -> volume name
    warnings: list[str] = field(default_factory=list)
    unsupported: list[Problem] = field(default_factory=list)
    marks: Marks = field(default_factory=Marks)   # where each key was written, for later errors
