"""The Jinja sandbox that subjects and bodies render in, bounded in work and in size.

Jinja's sandbox keeps a template away from Python's internals, but not from running forever
(``{% for i in range(100000) %}{% for j in range(100000) %}``) or from filling the memory
(``{{ 'x' * 10**9 }}``). A pure-Python loop cannot be interrupted from outside (neither
asyncio nor a signal reaches a worker thread), so the template interrupts itself: every loop
iteration and every call it makes counts a step, and a step past :data:`MAX_STEPS`, or past
:data:`MAX_CPU_SECONDS` of this thread's CPU time, stops the rendering. Sizes are checked
before the operations that can multiply them (``*``, ``%``, widths, ``join``, ``replace``...)
and after everything else, so no value a template builds exceeds :data:`MAX_VALUE_CHARS`.
"""

from __future__ import annotations

import copy
import re
import string
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from functools import wraps
from typing import Any

from jinja2 import Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

from outreach import clock

# A real template makes a few hundred steps; a million is a runaway loop.
MAX_STEPS = 1_000_000
MAX_CPU_SECONDS = 1.0
# Characters of a string, or characters and items of a list or mapping, however nested.
MAX_VALUE_CHARS = 1_000_000
MAX_INT_BITS = 10_000  # about 3,000 digits: far above any price, far below a slow multiply


class RenderLimit(Exception):
    """A template went over a bound. The renderer turns it into a ``TemplateError`` that
    names the line of the file."""

    lineno: int | None = None  # the template's line, when the traceback does not show it


class Runaway(RenderLimit):
    """A template went over the step or the time bound: it would do so again."""


class _Budget:
    __slots__ = ("started", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.started = clock.cpu_seconds()


_budget: ContextVar[_Budget | None] = ContextVar("outreach_render_budget", default=None)


def _tick(count: int = 1) -> None:
    budget = _budget.get()
    if budget is None:  # compile-time constant folding: no rendering under way
        return
    before = budget.steps
    budget.steps += count
    if budget.steps > MAX_STEPS:
        raise Runaway(
            f"stopped after {MAX_STEPS:,} loop iterations and calls (a loop that never ends?)"
        )
    if budget.steps >> 6 != before >> 6:  # the CPU clock every 64 steps: reading it is a syscall
        spent = clock.cpu_seconds() - budget.started
        if spent > MAX_CPU_SECONDS:
            raise Runaway(
                f"stopped after {MAX_CPU_SECONDS:g} s of rendering (a loop that never ends?)"
            )


def _too_big(size: int, what: str = "a value") -> RenderLimit:
    return RenderLimit(
        f"builds {what} of {size:,} characters or items; at most {MAX_VALUE_CHARS:,}"
    )


def _allow(size: int, what: str = "a value") -> None:
    if size > MAX_VALUE_CHARS:
        raise _too_big(size, what)


def weight(value: Any) -> int:
    """What printing ``value`` costs: the characters of a string, plus one for every item of a
    list, tuple, set or mapping, counted as often as it appears (``[x, x]`` counts ``x``
    twice, as ``str()`` would print it). Shared items are walked once, so the count itself is
    cheap; it stops as soon as it passes the bound."""
    seen: dict[int, int] = {}

    def walk(item: Any, depth: int) -> int:
        if isinstance(item, str | bytes):
            return len(item)
        if not isinstance(item, list | tuple | set | frozenset | dict):
            return 1
        known = seen.get(id(item))
        if known is not None:
            return known
        if depth > 100:
            raise RenderLimit("builds lists nested more than 100 deep")
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        _tick(1 + len(children) // 64)  # so that walking a long list counts as work
        total = 1
        for child in children:
            total += walk(child, depth + 1)
            if total > MAX_VALUE_CHARS:
                raise _too_big(total)
        seen[id(item)] = total
        return total

    return walk(value, 0)


def bounded(value: Any) -> Any:
    """``value``, unless it is larger than a template may build."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise RenderLimit(f"builds a number of more than {MAX_INT_BITS:,} bits")
        return value
    if isinstance(value, str | bytes):
        _allow(len(value))
    elif isinstance(value, list | tuple | set | frozenset | dict):
        _allow(weight(value))
    return value


def _iterate(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _tick()
        yield item


# -- widths and counts that multiply a size, checked before the work is done ------------------

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(template: str) -> None:
    for match in _PERCENT.finditer(template):
        for number in match.groups():
            if number == "*":
                raise RenderLimit("a '%*' width taken from the values is not allowed")
            if number is not None:
                _allow(int(number), "a field")


def _check_brace_format(template: str) -> None:
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # str.format itself reports the malformed string
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise RenderLimit("a format width taken from the values is not allowed")
        for number in re.findall(r"\d+", spec):
            _allow(int(number), "a field")


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set) else 1


def _join_size(separator: Any, items: list[Any]) -> int:
    return sum(_length(item) for item in items) + _length(separator) * max(len(items) - 1, 0)


def _replace_size(text: Any, old: Any, new: Any, count: Any) -> int:
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def _check_str_method(
    method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Refuse a call of a string method that would build too much; ``join``'s argument is
    returned as a list, so that it is read once."""
    text = getattr(method, "__self__", None)
    wrapped = getattr(method, "__wrapped__", None)  # the sandbox's own str.format wrapper
    if wrapped is not None and isinstance(getattr(wrapped, "__self__", None), str):
        if wrapped.__name__ in ("format", "format_map"):
            _check_brace_format(wrapped.__self__)
        return args
    if not isinstance(text, str):
        return args
    name = method.__name__
    if name in ("center", "ljust", "rjust", "zfill"):
        _allow(_int(_arg(args, kwargs, 0, "width", 0)))
    elif name == "expandtabs":
        _allow(len(text) * max(_int(_arg(args, kwargs, 0, "tabsize", 8)), 1))
    elif name == "join" and args:
        items = list(_iterate(args[0]))
        _allow(_join_size(text, items))
        return (items, *args[1:])
    elif name == "replace" and len(args) >= 2:
        _allow(_replace_size(text, args[0], args[1], _arg(args, kwargs, 2, "count", -1)))
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _allow(len(text) * max(longest, 1))
    return args


def _indent_size(text: Any, width: Any) -> int:
    per_line = _length(width) if isinstance(width, str) else _int(width)
    return _length(text) + (str(text).count("\n") + 1) * per_line


_FILTER_CHECKS: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], None]] = {
    "center": lambda a, k: _allow(_int(_arg(a, k, 1, "width", 80))),
    "indent": lambda a, k: _allow(_indent_size(a[0], _arg(a, k, 1, "width", 4))),
    "format": lambda a, k: _check_percent_format(a[0]) if a and isinstance(a[0], str) else None,
    "replace": lambda a, k: (
        _allow(
            _replace_size(
                a[0],
                _arg(a, k, 1, "old", ""),
                _arg(a, k, 2, "new", ""),
                _arg(a, k, 3, "count", None),
            )
        )
        if len(a) >= 3 or {"old", "new"} <= set(k)
        else None
    ),
    "wordwrap": lambda a, k: _allow(
        _length(a[0])
        + _length(a[0])
        // max(_int(_arg(a, k, 1, "width", 79)), 1)
        * _length(_arg(a, k, 3, "wrapstring", "\n"))
    ),
    "batch": lambda a, k: _allow(_int(_arg(a, k, 1, "linecount", 1)), "a batch"),
    "slice": lambda a, k: _allow(_int(_arg(a, k, 1, "slices", 1)), "slices"),
}


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    offset = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if name == "join" and len(args) > offset:  # read the items once, then size the result
            items = list(_iterate(args[offset]))
            _allow(_join_size(_arg(args[offset + 1 :], kwargs, 0, "d", ""), items))
            args = (*args[:offset], items, *args[offset + 1 :])
        elif check is not None:
            check(args[offset:], kwargs)
        return bounded(function(*args, **kwargs))

    return run


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    _allow(_int(n) * _int(max), "placeholder text")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's compiler, with a step counted at every loop iteration and a size check around
    every list, tuple, mapping and ``~`` the template builds."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node = copy.copy(node)
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("outreach_iterate"), [node.iter], [], None, None
        )
        super().visit_For(node, frame)

    def _checked(self, visit: Callable[..., None], node: nodes.Node, frame: Frame) -> None:
        self.write("environment.outreach_bounded(")
        visit(node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self._checked(super().visit_Concat, node, frame)

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._checked(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._checked(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # `{% for a, b in ... %}`: a target, not a value
            super().visit_Tuple(node, frame)
        else:
            self._checked(super().visit_Tuple, node, frame)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no ``list.append`` and the like, so nothing grows in
    place), with every loop, call, operator and filter bounded as the module says."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["lipsum"] = _lipsum
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.outreach_iterate = _iterate
        self.outreach_bounded = bounded

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        """Joins what a macro, a ``{% set %}`` block or a ``{% filter %}`` block wrote,
        refusing it while it grows past the bound instead of after."""
        kept: list[str] = []
        total = 0
        for part in parts:
            total += len(part)
            if total > MAX_VALUE_CHARS:
                raise _too_big(total, "a text")
            kept.append(part)
        return "".join(kept)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        if isinstance(__obj, LoopContext) and args:  # `loop(children)` of a recursive loop
            args = (_iterate(args[0]), *args[1:])
        else:
            args = _check_str_method(__obj, args, kwargs)
        return bounded(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
                    _allow(weight(seq) * max(times, 0))
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise RenderLimit(f"builds a number of more than {MAX_INT_BITS:,} bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right > 0 and right * abs(left).bit_length() > MAX_INT_BITS:
                raise RenderLimit(f"builds a number of more than {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return bounded(super().call_binop(context, operator, left, right))


def _generate(template: Template, variables: Mapping[str, Any]) -> Iterator[str]:
    """``template.generate(variables)``, with one copy of the variables instead of two:
    ``generate`` copies them, then its context copies them again over the globals (a
    ``ChainMap``, slow to read whole). Here the globals, flattened once per template, and the
    variables make one dict that the context takes as it is (``shared``)."""
    flat = _flat_globals.get(template)
    if flat is None:
        flat = _flat_globals[template] = dict(template.globals)
    context = template.new_context({**flat, **variables}, shared=True)
    try:
        yield from template.root_render_func(context)
    except Exception:  # as generate does: the traceback rewritten to the template's lines
        yield template.environment.handle_exception()


_flat_globals: weakref.WeakKeyDictionary[Template, dict[str, Any]] = weakref.WeakKeyDictionary()


def render_bounded(template: Template, variables: Mapping[str, Any], limit: int, what: str) -> str:
    """Render ``template`` inside a fresh budget, stopping as soon as its output passes
    ``limit`` characters (a ``what``)."""
    token = _budget.set(_Budget())
    try:
        kept: list[str] = []
        total = 0
        parts = _generate(template, variables)
        for part in parts:
            total += len(part)
            if total > limit:
                error = RenderLimit(
                    f"renders to more than {limit:,} characters, the most a {what} may have"
                )
                error.lineno = _writing_line(template, parts)
                raise error
            kept.append(part)
        return "".join(kept)
    finally:
        _budget.reset(token)


def _writing_line(template: Template, parts: Iterator[str]) -> int | None:
    """The template line whose output was being produced: the innermost generator's."""
    inner: Any = parts
    while getattr(inner, "gi_yieldfrom", None) is not None:
        inner = inner.gi_yieldfrom
    frame = getattr(inner, "gi_frame", None)
    if frame is None or frame.f_code.co_filename != "<template>":
        return None
    return int(template.get_corresponding_lineno(frame.f_lineno))
