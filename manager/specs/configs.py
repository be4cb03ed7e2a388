"""Configs on the managers: like secrets (see manager.specs.secrets), but not secret.

A config's data may be shown by the API (base64 in JSON). The worker mounts each one read-only
at its target: /<name> unless the reference names another. A config may not take a target one of
the service's secrets has.
"""
from __future__ import annotations

from common.model import Config, ConfigReference, ConfigSpec
from manager.specs.data_objects import DataKind
from manager.specs.secrets import SECRETS

CONFIGS = DataKind(noun="config", object_type=Config, spec_type=ConfigSpec,
                   reference_type=ConfigReference, shows_data=True, target_dir="",
                   reserved_targets=("/",), shares_targets_with=SECRETS)
