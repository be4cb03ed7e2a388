"""Reading one Compose file: YAML with anchors and merge keys, and the line of every key.

PyYAML follows YAML 1.1, whose implicit types break Compose files: `ports: - 22:22` would be the
base-60 integer 1342 and `on`/`yes` booleans. Compose (compose-go, yaml.v3) reads YAML 1.2's core
schema, so this loader does too: only true/false are booleans, no base-60 numbers, no `=` values.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from shoal.stack.problems import ComposeError, Mark, Marks, Path, Problem

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where it is built in


class ComposeLoader(_Base):  # type: ignore[misc, valid-type]
    """SafeLoader with YAML 1.2 core schema scalars."""


ComposeLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        ("tag:yaml.org,2002:float",
         r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
         r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("tag:yaml.org,2002:merge", r"^(?:<<)$", "<")):
    ComposeLoader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _int_1_2(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    if len(text) > 1 and text.startswith("0") and text.isdigit():
        # Compose files write modes as 0440 and mean octal; compose-go reads them so too
        return int(text, 8) if set(text) <= set("01234567") else int(text, 10)
    return int(text, 10)


ComposeLoader.add_constructor("tag:yaml.org,2002:int", _int_1_2)


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


def load(text: str, file: str) -> tuple[Any, Marks]:
    """The document's value and where each key path was written. Errors carry line and column."""
    loader = ComposeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, Marks()
        marks = Marks()
        problems: list[Problem] = []
        _walk(file, node, (), marks, problems)
        if problems:
            raise ComposeError(problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(file, mark.line + 1, mark.column + 1) if mark else None
        what = exc.problem or exc.context or "invalid YAML"
        raise ComposeError([Problem((), f"YAML syntax error: {what}", where)]) from None
    except yaml.YAMLError as exc:
        raise ComposeError([Problem((), f"YAML error: {exc}", Mark(file, 1, 1))]) from None
    finally:
        loader.dispose()
    return data, marks


def _walk(file: str, node: yaml.Node, path: Path, marks: Marks, problems: list[Problem]) -> None:
    """Records marks; refuses duplicate keys, which PyYAML would silently resolve to the last."""
    marks.by_path.setdefault(path, _mark(file, node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:  # keys brought in by `<<: *anchor` are marked at the anchor
                    if isinstance(source, yaml.MappingNode):
                        for k, v in source.value:
                            if isinstance(k, yaml.ScalarNode) and (*path, k.value) not in marks.by_path:
                                _walk(file, v, (*path, k.value), marks, problems)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(path, "a key must be a plain string", _mark(file, key_node)))
                continue
            key = key_node.value
            if key in seen:
                first = _mark(file, seen[key])
                problems.append(Problem((*path, key), f"the key is written twice (first at line "
                                        f"{first.line}): keep one", _mark(file, key_node)))
                continue
            seen[key] = key_node
            marks.by_path[(*path, key)] = _mark(file, key_node)
            _walk(file, value_node, (*path, key), marks, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(file, item, (*path, i), marks, problems)


class Reset:
    """`!reset`: the key is removed from what earlier files said."""

    def __repr__(self) -> str:
        return "!reset"


class Override:
    """`!override`: this value replaces the earlier one instead of merging with it."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)
