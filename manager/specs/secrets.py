"""Secrets on the managers.

The data never leaves the managers except in a node's assignment answer (mutual TLS), and only
for the tasks that node runs. API views of a secret carry its metadata only. A reference lands
at /run/secrets/<name> unless it names an absolute target.
"""
from __future__ import annotations

from common.model import Secret, SecretReference, SecretSpec
from manager.specs.data_objects import DataKind

SECRETS_DIR = "/run/secrets"

SECRETS = DataKind(noun="secret", object_type=Secret, spec_type=SecretSpec,
                   reference_type=SecretReference, shows_data=False, target_dir=SECRETS_DIR,
                   reserved_targets=("/", SECRETS_DIR))
