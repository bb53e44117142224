"""YAML that remembers where each value came from, so every error can say ``file.yaml:14``.

Sequence and template files are written by people and read by every command (``status``
included), so the reader refuses what only an attack needs: anchors and aliases (a
"billion laughs" file expands to gigabytes, a recursive alias never ends), nesting deeper
than :data:`MAX_DEPTH` and files over :data:`MAX_FILE_BYTES`. Each is refused at the line
where it starts, before anything is expanded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from outreach.errors import OutreachError

Loc = tuple[str | int, ...]

# The shipped files nest 6 levels deep (bodies > variant > language > persona > text); 32
# leaves room for any real file and keeps the composer far from Python's recursion limit.
MAX_DEPTH = 32
# A template file with 20 variants in three languages and four personas is about 100 KB.
MAX_FILE_BYTES = 1_000_000


@dataclass
class YamlDoc:
    """A parsed YAML file: the plain Python data plus the line of every node by its path."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    # Block scalars (``|``) start their text on the line after the indicator.
    text_lines: dict[Loc, int] = field(default_factory=dict)
    # Problems that do not stop the reading (a key written twice): the loader lists them with
    # its own, so that `validate` reports every problem of the file in one run.
    problems: list[OutreachError] = field(default_factory=list)

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


class _Refused(Exception):
    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, minus anchors and aliases, with a bounded depth.

    The parser itself keeps an explicit stack; only the composer recurses, so bounding it here
    bounds the whole reading.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self.last_quoted: yaml.ScalarToken | None = None

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(
                f"YAML anchors and aliases ({sign}{event.anchor}) are not allowed here: "
                "write the value out",
                event.start_mark,
            )
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def scan_flow_scalar(self, style: str) -> yaml.ScalarToken:
        # Remembered so that an error right after a quoted text that ran on over several lines
        # can point at the quote that was left open, not at where the text finally ended.
        token: yaml.ScalarToken = super().scan_flow_scalar(style)  # type: ignore[misc]
        self.last_quoted = token
        return token


def load_yaml(path: Path, error: type[OutreachError], display: str | None = None) -> YamlDoc:
    """Parse ``path``; YAML syntax errors become ``error`` carrying the file and line.

    Problems that leave the rest readable (a key written twice) are collected in
    :attr:`YamlDoc.problems`; the caller reports them with its own.
    """
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(
                f"the file is {size:,} bytes; a sequence or template file is at most "
                f"{MAX_FILE_BYTES:,}",
                file=name,
            )
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise error("file not found", file=name) from None
    except UnicodeDecodeError as exc:
        raise error(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} (save the file as UTF-8)",
            file=name,
            line=raw.count(b"\n", 0, exc.start) + 1,
        ) from None
    except OSError as exc:
        raise error(f"cannot read: {exc}", file=name) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except _Refused as exc:
        raise error(exc.message, file=name, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, loader.last_quoted, error, name) from None
    finally:
        loader.dispose()
    doc = YamlDoc(path=path, data=None)
    if node is None:
        doc.data = None
        return doc
    doc.data = _convert(node, (), doc, error, name)
    return doc


def _syntax_error(
    exc: yaml.MarkedYAMLError,
    quoted: yaml.ScalarToken | None,
    error: type[OutreachError],
    name: str,
) -> OutreachError:
    """One line for a YAML syntax error, at the line a person has to fix."""
    problem = exc.problem or exc.context or "invalid YAML"
    mark = exc.problem_mark or exc.context_mark
    if exc.context and exc.context.startswith("while scanning") and exc.context_mark:
        # "while scanning a quoted scalar ... found unexpected end of stream": the problem
        # mark is the end of the file, the context mark is the quote that never closed.
        return error(
            f"YAML syntax: {problem} {exc.context}", file=name, line=exc.context_mark.line + 1
        )
    if (
        quoted is not None
        and mark is not None
        and quoted.start_mark.line != quoted.end_mark.line
        and mark.line == quoted.end_mark.line
    ):
        # A quote left open swallows the lines after it up to the next quote, and the parser
        # stumbles only there.
        return error(
            f"YAML syntax: the quoted text that starts here runs on to line "
            f"{quoted.end_mark.line + 1}, where {problem}",
            file=name,
            line=quoted.start_mark.line + 1,
            hint="is its closing quote missing?",
        )
    return error(f"YAML syntax: {problem}", file=name, line=mark.line + 1 if mark else None)


def _convert(node: yaml.Node, loc: Loc, doc: YamlDoc, error: type[OutreachError], name: str) -> Any:
    doc.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = (
                yaml.SafeLoader(key_node.value).construct_scalar(key_node)
                if isinstance(key_node, yaml.ScalarNode)
                else None
            )
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                doc.problems.append(error("keys must be plain names", file=name, line=line))
                continue
            if key in result:
                doc.problems.append(
                    error(
                        f"'{key}' appears twice (first on line {first_line[key]}); "
                        "the first is used",
                        file=name,
                        line=line,
                    )
                )
                continue
            first_line[key] = line
            result[key] = _convert(value_node, (*loc, key), doc, error, name)
            # A key's line is where the key is written, which is what a reader looks for.
            doc.lines[(*loc, key)] = line
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
