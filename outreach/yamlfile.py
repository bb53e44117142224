"""YAML that remembers where each value came from, so every error can say ``file.yaml:14``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from outreach.errors import OutreachError

Loc = tuple[str | int, ...]


@dataclass
class YamlDoc:
    """A parsed YAML file: the plain Python data plus the line of every node by its path."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    # Block scalars (``|``) start their text on the line after the indicator.
    text_lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest ancestor that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)

    def text_line(self, loc: Loc) -> int | None:
        """The line where the text of the scalar at ``loc`` begins."""
        return self.text_lines.get(tuple(loc)) or self.line(loc)


def load_yaml(path: Path, error: type[OutreachError], display: str | None = None) -> YamlDoc:
    """Parse ``path``; YAML syntax errors become ``error`` carrying the file and line."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error("file not found", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read: {exc}", file=name) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise error(
            f"YAML syntax: {problem}", file=name, line=mark.line + 1 if mark else None
        ) from None
    doc = YamlDoc(path=path, data=None)
    if node is None:
        doc.data = None
        return doc
    doc.data = _convert(node, (), doc, error, name)
    return doc


def _convert(node: yaml.Node, loc: Loc, doc: YamlDoc, error: type[OutreachError], name: str) -> Any:
    doc.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = (
                yaml.SafeLoader(key_node.value).construct_scalar(key_node)
                if isinstance(key_node, yaml.ScalarNode)
                else None
            )
            if not isinstance(key, str):
                raise error(
                    "keys must be plain names", file=name, line=key_node.start_mark.line + 1
                )
            if key in result:
                raise error(f"'{key}' appears twice", file=name, line=key_node.start_mark.line + 1)
            result[key] = _convert(value_node, (*loc, key), doc, error, name)
            # A key's line is where the key is written, which is what a reader looks for.
            doc.lines[(*loc, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), doc, error, name) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.style in ("|", ">"):
        doc.text_lines[loc] = node.start_mark.line + 2
    else:
        doc.text_lines[loc] = node.start_mark.line + 1
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise error(f"YAML: {exc.problem}", file=name, line=node.start_mark.line + 1) from None
    finally:
        loader.dispose()
