"""Find, load and render the subject and body variants of a step, in Jinja's sandbox.

One YAML file per step holds every variant side by side::

    subjects:
      - id: quick-question          # stable: A/B statistics hang on it
        en: "Quick question, {{ first_name | default('there') }}"
        fi: "Nopea kysymys"
    bodies:
      - id: short-case
        retired: true               # kept for its history, never chosen again
        en:
          default: |
            Hi {{ first_name }}, ...
          decision_maker: |
            ...

A language value is either one text for every persona or a mapping of persona to text, with
``default`` for personas that have no text of their own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from outreach.errors import TemplateError, TemplateProblems
from outreach.prospect_csv import LANGUAGES, PERSONAS
from outreach.sandbox import BoundedSandbox, RenderLimit, Runaway, render_bounded
from outreach.yamlfile import Loc, YamlDoc, load_yaml

PERSONA_KEYS = ("default", *PERSONAS)
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
Kind = Literal["subject", "body"]
# Longer than any mail client shows in a list, so longer is a slip (a variable holding a
# paragraph), not a subject.
MAX_SUBJECT_CHARS = 250
# Gmail clips a message over 102 KB behind "[Message clipped]"; a cold email is a few hundred
# words.
MAX_BODY_CHARS = 100_000


@dataclass(frozen=True)
class Text:
    """One Jinja source text and the line of the file where it begins."""

    source: str
    line: int


@dataclass(frozen=True)
class Variant:
    """A subject or a body variant: one idea, written per language and persona."""

    kind: Kind
    id: str
    line: int
    texts: dict[tuple[str, str], Text]
    html: dict[tuple[str, str], Text] = field(default_factory=dict)
    retired: bool = False
    note: str | None = None

    @property
    def languages(self) -> set[str]:
        return {language for language, _ in self.texts}

    def text_for(self, language: str, persona: str | None) -> Text | None:
        """The persona's own text in ``language``, else that language's default."""
        return _pick(self.texts, language, persona)

    def html_for(self, language: str, persona: str | None) -> Text | None:
        return _pick(self.html, language, persona)

    def sources(self) -> list[str]:
        return [t.source for t in self.texts.values()] + [t.source for t in self.html.values()]

    def fingerprint(self, language: str) -> str:
        """A hash of the variant's texts in ``language`` (every persona, plain and HTML).

        An edit in place changes it; the A/B registry refuses that once the language's text
        has been sent, so one id never stands for two texts.
        """
        digest = hashlib.sha256()
        for key in sorted(k for k in self.texts if k[0] == language):
            digest.update(repr((key, self.texts[key].source)).encode())
        for key in sorted(k for k in self.html if k[0] == language):
            digest.update(repr(("html", key, self.html[key].source)).encode())
        return digest.hexdigest()[:16]


def _pick(texts: dict[tuple[str, str], Text], language: str, persona: str | None) -> Text | None:
    if persona and (language, persona) in texts:
        return texts[(language, persona)]
    return texts.get((language, "default"))


@dataclass(frozen=True)
class StepTemplate:
    """Every variant of one step, as loaded from its file."""

    path: str
    subjects: list[Variant]
    bodies: list[Variant]

    def active(self, kind: Kind) -> list[Variant]:
        return [v for v in (self.subjects if kind == "subject" else self.bodies) if not v.retired]

    def variant(self, kind: Kind, variant_id: str) -> Variant:
        for variant in self.subjects if kind == "subject" else self.bodies:
            if variant.id == variant_id:
                return variant
        raise TemplateError(f"no {kind} variant '{variant_id}'", file=self.path)

    def eligible(self, kind: Kind, language: str, persona: str | None) -> list[Variant]:
        """Active variants that have a text for this language (and persona)."""
        return [v for v in self.active(kind) if v.text_for(language, persona) is not None]


def load_step_template(path: Path, display: str | None = None) -> StepTemplate:
    """Load and check one template file (structure only; rendering is checked separately).
    A broken file raises its first problem (``TemplateProblems`` carries them all)."""
    template, problems = read_step_template(path, display)
    if problems:
        raise problems[0] if len(problems) == 1 else TemplateProblems(problems)
    assert template is not None
    return template


def read_step_template(
    path: Path, display: str | None = None
) -> tuple[StepTemplate | None, list[TemplateError]]:
    """The file's usable variants and every problem in it, each at its line, so that
    ``validate`` lists them all in one run. ``None`` when nothing of the file is usable."""
    name = display or str(path)
    try:
        doc = load_yaml(path, TemplateError, name)
    except TemplateError as exc:
        return None, [exc]
    problems: list[TemplateError] = [p for p in doc.problems if isinstance(p, TemplateError)]
    if not isinstance(doc.data, dict):
        problems.append(
            TemplateError(
                "a template file is a mapping with `subjects:` and `bodies:`", file=name, line=1
            )
        )
        return None, problems
    for key in sorted(set(doc.data) - {"subjects", "bodies"}, key=lambda k: doc.line((k,)) or 0):
        problems.append(
            TemplateError(
                f"unknown key '{key}' (use subjects and bodies)", file=name, line=doc.line((key,))
            )
        )
    subjects = _variants(doc, name, "subjects", "subject", problems)
    bodies = _variants(doc, name, "bodies", "body", problems)
    if not doc.data.get("bodies"):
        problems.append(TemplateError("a step needs at least one body variant", file=name, line=1))
    problems.sort(key=lambda problem: problem.line or 0)  # in the order a reader meets them
    return StepTemplate(path=name, subjects=subjects, bodies=bodies), problems


def _variants(
    doc: YamlDoc, name: str, key: str, kind: Kind, problems: list[TemplateError]
) -> list[Variant]:
    """The usable variants under ``key``; each problem found goes to ``problems``, and a
    variant without a usable id or text is left out (the rest of the file is still read)."""
    items = doc.data.get(key) or []
    if not isinstance(items, list):
        problems.append(
            TemplateError(f"`{key}` is a list of variants", file=name, line=doc.line((key,)))
        )
        return []
    seen: dict[str, int] = {}
    result = []
    for i, item in enumerate(items):
        loc: Loc = (key, i)
        line = doc.line(loc) or 1
        if not isinstance(item, dict):
            problems.append(
                TemplateError(
                    f"each {kind} variant is a mapping with an `id`", file=name, line=line
                )
            )
            continue
        variant_id = item.get("id")
        usable = True
        if not isinstance(variant_id, str) or not ID_PATTERN.match(variant_id):
            problems.append(
                TemplateError(
                    f"{kind} variant needs an `id` of lowercase letters, digits and dashes",
                    file=name,
                    line=line,
                )
            )
            usable = False
        elif variant_id in seen:
            problems.append(
                TemplateError(
                    f"{kind} id '{variant_id}' is used twice (first on line {seen[variant_id]})",
                    file=name,
                    line=doc.line((*loc, "id")) or line,
                )
            )
            usable = False
        else:
            seen[variant_id] = doc.line((*loc, "id")) or line
        texts: dict[tuple[str, str], Text] = {}
        html: dict[tuple[str, str], Text] = {}
        retired = item.get("retired", False)
        if not isinstance(retired, bool):
            problems.append(
                TemplateError(
                    "retired is true or false", file=name, line=doc.line((*loc, "retired"))
                )
            )
            retired = False
        for field_name, value in item.items():
            if field_name in ("id", "retired", "note"):
                continue
            if field_name == "html" and kind == "body":
                if not isinstance(value, dict):
                    problems.append(
                        TemplateError(
                            "html maps languages to texts",
                            file=name,
                            line=doc.line((*loc, "html")),
                        )
                    )
                    continue
                for language, per_persona in value.items():
                    _texts(
                        doc, name, (*loc, "html", language), language, per_persona, html, problems
                    )
                continue
            if field_name not in LANGUAGES:
                problems.append(
                    TemplateError(
                        f"unknown key '{field_name}' in {kind} '{variant_id}' "
                        f"(languages: {', '.join(LANGUAGES)}; also id, note, retired"
                        + (", html)" if kind == "body" else ")"),
                        file=name,
                        line=doc.line((*loc, field_name)),
                    )
                )
                continue
            _texts(doc, name, (*loc, field_name), field_name, value, texts, problems)
        if not texts:
            if not any(f in LANGUAGES for f in item):  # not when its one language was broken
                problems.append(
                    TemplateError(
                        f"{kind} '{variant_id}' has no text in any language", file=name, line=line
                    )
                )
            continue
        if not usable:
            continue
        note = item.get("note")
        result.append(
            Variant(
                kind=kind,
                id=str(variant_id),
                line=line,
                texts=texts,
                html=html,
                retired=retired,
                note=str(note) if note is not None else None,
            )
        )
    return result


def _texts(
    doc: YamlDoc,
    name: str,
    loc: Loc,
    language: str,
    value: Any,
    out: dict[tuple[str, str], Text],
    problems: list[TemplateError],
) -> None:
    if language not in LANGUAGES:
        problems.append(
            TemplateError(f"unknown language '{language}'", file=name, line=doc.line(loc))
        )
        return
    if isinstance(value, str):
        out[(language, "default")] = Text(value, doc.text_line(loc) or 1)
        return
    if not isinstance(value, dict):
        problems.append(
            TemplateError(
                "a language holds a text, or a mapping of persona to text",
                file=name,
                line=doc.line(loc),
            )
        )
        return
    for persona, text in value.items():
        if persona not in PERSONA_KEYS:
            problems.append(
                TemplateError(
                    f"unknown persona '{persona}' (use {', '.join(PERSONA_KEYS)})",
                    file=name,
                    line=doc.line((*loc, persona)),
                )
            )
        elif not isinstance(text, str):
            problems.append(
                TemplateError("a text must be a string", file=name, line=doc.line((*loc, persona)))
            )
        else:
            out[(language, persona)] = Text(text, doc.text_line((*loc, persona)) or 1)
    if "default" not in value:
        problems.append(
            TemplateError(
                "give a `default` text too: a prospect without one of these personas needs one",
                file=name,
                line=doc.line(loc),
            )
        )


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    text: str
    html: str | None = None


class Renderer:
    """Renders variant texts in the bounded sandbox (:mod:`outreach.sandbox`), where an
    undefined variable is an error and a text may not run away in time or size."""

    def __init__(self) -> None:
        self._text_env = BoundedSandbox(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        self._html_env = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=True)
        self._compiled: dict[tuple[bool, str], jinja2.Template] = {}
        # Texts that ran past the step or time bound, refused at once from then on (until
        # they are edited): a runaway text costs its second once, not once per prospect.
        self._runaway: dict[tuple[bool, str], tuple[str, int]] = {}  # (why, line in text)

    def _template(self, text: Text, where: str, html: bool) -> jinja2.Template:
        key = (html, text.source)
        compiled = self._compiled.get(key)
        if compiled is None:
            env = self._html_env if html else self._text_env
            try:
                compiled = env.from_string(text.source)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"{_what(where)}: {exc.message}",
                    file=_file(where),
                    line=text.line + (exc.lineno or 1) - 1,
                ) from None
            except Exception as exc:  # noqa: BLE001 - nesting so deep the compiler gives up
                raise TemplateError(
                    f"{_what(where)}: cannot be compiled: {type(exc).__name__}: {exc}",
                    file=_file(where),
                    line=text.line,
                ) from None
            self._compiled[key] = compiled
        return compiled

    def render(
        self,
        text: Text,
        variables: Mapping[str, Any],
        where: str,
        *,
        html: bool = False,
        limit: int = MAX_BODY_CHARS,
        what: str = "body",
    ) -> str:
        """Render ``text``; ``where`` is ``file#what`` for error messages. The output may have
        at most ``limit`` characters (a ``what``)."""
        template = self._template(text, where, html)
        known = self._runaway.get((html, text.source))
        if known is not None:
            why, offset = known
            raise TemplateError(
                f"{_what(where)}: {why}", file=_file(where), line=text.line + offset
            )
        try:
            return render_bounded(template, variables, limit, what)
        except jinja2.UndefinedError as exc:
            missing = _undefined_name(str(exc.message))
            raise TemplateError(
                f"{_what(where)}: {exc.message}",
                file=_file(where),
                line=_line_of(text, missing),
                hint=_default_hint(str(exc.message), missing),
            ) from None
        except RenderLimit as exc:
            line = _failing_line(text, exc)
            if isinstance(exc, Runaway):
                self._runaway[(html, text.source)] = (str(exc), line - text.line)
            raise TemplateError(f"{_what(where)}: {exc}", file=_file(where), line=line) from None
        except jinja2.TemplateError as exc:  # includes SecurityError from the sandbox
            raise TemplateError(
                f"{_what(where)}: {exc}", file=_file(where), line=_failing_line(text, exc)
            ) from None
        except Exception as exc:  # noqa: BLE001 - user code: a filter on a bad value and the like
            raise TemplateError(
                f"{_what(where)}: {type(exc).__name__}: {exc}",
                file=_file(where),
                line=_failing_line(text, exc),
            ) from None

    def render_subject(
        self,
        variant: Variant,
        language: str,
        persona: str | None,
        variables: Mapping[str, Any],
        path: str,
    ) -> str:
        text = _require(variant, language, persona, path)
        where = f"{path}#subject '{variant.id}' [{language}/{persona or 'default'}]"
        subject = " ".join(self.render(text, variables, where, what="subject").split())
        if not subject:
            raise TemplateError(
                f"{_what(where)}: renders to an empty subject", file=path, line=text.line
            )
        if len(subject) > MAX_SUBJECT_CHARS:
            raise TemplateError(
                f"{_what(where)}: renders to a subject of {len(subject):,} characters; "
                f"at most {MAX_SUBJECT_CHARS}",
                file=path,
                line=text.line,
            )
        return subject

    def render_body(
        self,
        variant: Variant,
        language: str,
        persona: str | None,
        variables: Mapping[str, Any],
        path: str,
    ) -> tuple[str, str | None]:
        text = _require(variant, language, persona, path)
        where = f"{path}#body '{variant.id}' [{language}/{persona or 'default'}]"
        body = self.render(text, variables, where).strip("\n") + "\n"
        if not body.strip():
            raise TemplateError(
                f"{_what(where)}: renders to an empty body", file=path, line=text.line
            )
        html_text = variant.html_for(language, persona)
        html = (
            self.render(html_text, variables, where, html=True, what="HTML body")
            if html_text
            else None
        )
        return body, html


def _failing_line(text: Text, exc: BaseException) -> int:
    """The file line of the template line that was running when ``exc`` was raised (Jinja
    rewrites the traceback so that template frames carry template line numbers)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return text.line + (line or 1) - 1


def steering_names(source: str) -> frozenset[str]:
    """The variables whose *values* decide what a template does (``{% if industry == ... %}``,
    ``{{ a if b else c }}``, ``{% for x in items %}``), as opposed to those only printed or only
    tested for being defined. Two prospects that agree on which variables are defined and on
    these values render alike, so the import's pre-flight check can be shared between them."""
    try:
        tree = SandboxedEnvironment().parse(source)
    except Exception:  # noqa: BLE001 - a syntax error or runaway nesting: the render reports it
        return frozenset()
    names: set[str] = set()

    def visit(node: nodes.Node, steering: bool) -> None:
        if isinstance(node, nodes.Test) and node.name in ("defined", "undefined"):
            if not isinstance(node.node, nodes.Name):
                visit(node.node, steering)
            return
        if isinstance(node, nodes.Name):
            if steering:
                names.add(node.name)
            return
        for field_name, value in node.iter_fields():
            child_steers = (
                steering
                or (isinstance(node, nodes.If | nodes.CondExpr) and field_name == "test")
                or (isinstance(node, nodes.For) and field_name in ("iter", "test"))
            )
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, nodes.Node):
                    visit(child, child_steers)

    visit(tree, False)
    return frozenset(names)


def _require(variant: Variant, language: str, persona: str | None, path: str) -> Text:
    text = variant.text_for(language, persona)
    if text is None:
        raise TemplateError(
            f"{variant.kind} '{variant.id}' has no '{language}' text", file=path, line=variant.line
        )
    return text


def _file(where: str) -> str:
    return where.split("#", 1)[0]


def _what(where: str) -> str:
    return where.split("#", 1)[1] if "#" in where else where


def _undefined_name(message: str) -> str | None:
    match = re.search(r"'([^']+)' is undefined", message) or re.search(
        r"has no attribute '([^']+)'", message
    )
    return match.group(1) if match else None


def _default_hint(message: str, missing: str | None) -> str | None:
    if missing is None:
        return None
    if "has no attribute" in message:
        return f"give '{missing}' a default in the template: ...{missing} | default('...')"
    return (
        "give the prospect that field, or a default in the template: "
        f"{{{{ {missing} | default('...') }}}}"
    )


def _line_of(text: Text, name: str | None) -> int:
    """The file line where ``name`` first appears in the text, else where the text starts."""
    if name:
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        for offset, line in enumerate(text.source.splitlines()):
            if pattern.search(line):
                return text.line + offset
    return text.line


class TemplateLibrary:
    """The step templates under one ``templates/`` folder, loaded once each."""

    def __init__(self, directory: Path, root: Path | None = None) -> None:
        self.directory = directory
        self.root = root
        self._loaded: dict[str, tuple[StepTemplate | None, list[TemplateError]]] = {}

    def display(self, relative: str) -> str:
        path = self.directory / relative
        if self.root is not None and path.is_relative_to(self.root):
            return str(path.relative_to(self.root))
        return str(path)

    def check(self, relative: str) -> tuple[StepTemplate | None, list[TemplateError]]:
        """The file's usable variants and every problem in it (what ``validate`` lists)."""
        if relative not in self._loaded:
            path = self.directory / relative
            if not path.resolve().is_relative_to(self.directory.resolve()):
                self._loaded[relative] = (
                    None,
                    [
                        TemplateError(
                            "templates must live under the templates folder",
                            file=self.display(relative),
                        )
                    ],
                )
            else:
                self._loaded[relative] = read_step_template(path, self.display(relative))
        return self._loaded[relative]

    def get(self, relative: str) -> StepTemplate:
        """The template, or its first problem raised (all of them in ``TemplateProblems``)."""
        template, problems = self.check(relative)
        if problems:
            raise problems[0] if len(problems) == 1 else TemplateProblems(problems)
        assert template is not None
        return template

    def files(self) -> Iterator[str]:
        for path in sorted(self.directory.rglob("*.y*ml")):
            yield str(path.relative_to(self.directory))
