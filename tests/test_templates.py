"""Template files: variants with stable ids, persona and language versions, the sandbox."""

from pathlib import Path

import pytest

from outreach.errors import TemplateError
from outreach.templates import Renderer, load_step_template

STEP = """\
subjects:
  - id: quick-question
    en: "Quick question, {{ first_name | default('there') }}"
    fi: "Nopea kysymys"
  - id: old-one
    retired: true
    en: "Old subject"
bodies:
  - id: short
    en:
      default: |
        Hi {{ first_name }},
        we help {{ company }}.
      decision_maker: |
        Hi {{ first_name }}, pipeline talk.
    fi: |
      Hei {{ first_name }}!
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "1-intro.yaml"
    path.write_text(text)
    return path


def test_variants_ids_languages_and_retired(tmp_path: Path) -> None:
    template = load_step_template(write(tmp_path, STEP))
    assert [v.id for v in template.subjects] == ["quick-question", "old-one"]
    assert [v.id for v in template.active("subject")] == ["quick-question"]
    assert template.subjects[0].languages == {"en", "fi"}
    assert template.eligible("subject", "fi", None)[0].id == "quick-question"
    assert template.eligible("subject", "sv", None) == []


def test_persona_text_with_default_fallback(tmp_path: Path) -> None:
    body = load_step_template(write(tmp_path, STEP)).bodies[0]
    assert "pipeline" in body.text_for("en", "decision_maker").source
    assert "we help" in body.text_for("en", "buyer").source
    assert body.text_for("fi", "decision_maker").source.startswith("Hei")


def test_fingerprint_changes_when_that_languages_text_is_edited(tmp_path: Path) -> None:
    subject = load_step_template(write(tmp_path, STEP)).subjects[0]
    en, fi = subject.fingerprint("en"), subject.fingerprint("fi")
    assert en != fi
    edited = load_step_template(write(tmp_path, STEP.replace("Quick question", "Quick q")))
    assert edited.subjects[0].fingerprint("en") != en
    assert edited.subjects[0].fingerprint("fi") == fi  # the Finnish text did not change
    other_edit = load_step_template(write(tmp_path, STEP.replace("Old subject", "Older")))
    assert other_edit.subjects[0].fingerprint("en") == en


def test_render_with_strict_undefined_names_the_line(tmp_path: Path) -> None:
    template = load_step_template(write(tmp_path, STEP))
    renderer = Renderer()
    text, _ = renderer.render_body(
        template.bodies[0],
        "en",
        None,
        {"first_name": "Ann", "company": "Acme", "sender": {}},
        template.path,
    )
    assert text == "Hi Ann,\nwe help Acme.\n"
    with pytest.raises(TemplateError) as info:
        renderer.render_body(
            template.bodies[0], "en", None, {"first_name": "Ann", "sender": {}}, template.path
        )
    assert info.value.line == 13  # the line with {{ company }}
    assert "'company' is undefined" in info.value.message
    assert info.value.hint and "default" in info.value.hint


def test_default_filter_makes_a_variable_optional(tmp_path: Path) -> None:
    template = load_step_template(write(tmp_path, STEP))
    subject = Renderer().render_subject(
        template.subjects[0], "en", None, {"sender": {}}, template.path
    )
    assert subject == "Quick question, there"


def test_subject_can_never_carry_a_line_break(tmp_path: Path) -> None:
    template = load_step_template(write(tmp_path, STEP))
    subject = Renderer().render_subject(
        template.subjects[0],
        "en",
        None,
        {"first_name": "Ann\r\nBcc: victim@example.com", "sender": {}},
        template.path,
    )
    assert "\n" not in subject and "\r" not in subject
    assert subject == "Quick question, Ann Bcc: victim@example.com"


def test_sandbox_refuses_unsafe_attribute_access(tmp_path: Path) -> None:
    text = STEP.replace("Nopea kysymys", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    template = load_step_template(write(tmp_path, text))
    with pytest.raises(TemplateError) as info:
        Renderer().render_subject(template.subjects[0], "fi", None, {"sender": {}}, template.path)
    assert info.value.line == 4


def test_syntax_error_line_is_the_file_line(tmp_path: Path) -> None:
    template = load_step_template(
        write(tmp_path, STEP.replace("we help {{ company }}", "we help {{ company }"))
    )
    with pytest.raises(TemplateError) as info:
        Renderer().render_body(template.bodies[0], "en", None, {"sender": {}}, template.path)
    assert info.value.line == 13


@pytest.mark.parametrize(
    ("change", "message", "line"),
    [
        (("id: old-one", "id: quick-question"), "used twice", 5),
        (("id: short", "id: Short Body"), "needs an `id`", 9),
        (("    fi: |\n", "    de: |\n"), "unknown key 'de'", 16),
        (("      decision_maker:", "      ceo:"), "unknown persona 'ceo'", 14),
        (
            (
                "      default: |\n        Hi {{ first_name }},\n        we help {{ company }}.\n",
                "",
            ),
            "give a `default` text too",
            10,
        ),
        (("retired: true", "retired: maybe"), "retired is true or false", 6),
    ],
)
def test_structure_errors_name_file_and_line(
    tmp_path: Path, change: tuple[str, str], message: str, line: int
) -> None:
    with pytest.raises(TemplateError) as info:
        load_step_template(write(tmp_path, STEP.replace(*change)))
    assert message in info.value.message
    assert info.value.line == line


def test_a_broken_file_gives_every_problem_and_keeps_its_good_variants(tmp_path: Path) -> None:
    from outreach.errors import TemplateProblems
    from outreach.templates import read_step_template

    broken = (
        STEP.replace("id: old-one", "id: quick-question")  # line 5: a duplicate id
        .replace("    fi: |\n", "    de: |\n")  # line 16: an unknown key
        .replace("      decision_maker:", "      ceo:")  # line 14: an unknown persona
        + "colour: red\n"  # line 18: an unknown top-level key
    )
    template, problems = read_step_template(write(tmp_path, broken))
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (5, "subject id 'quick-question' is used twice"),
        (14, "unknown persona 'ceo'"),
        (16, "unknown key 'de' in body 'short'"),
        (18, "unknown key 'colour'"),
    ]
    assert template is not None
    assert [v.id for v in template.subjects] == ["quick-question"]  # the first one kept
    assert template.bodies[0].text_for("en", None) is not None  # still rendered by validate
    with pytest.raises(TemplateProblems) as info:
        load_step_template(write(tmp_path, broken))
    assert info.value.line == 5 and len(info.value.problems) == 4
