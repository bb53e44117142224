"""Sequence YAML: the shipped playbook sequences, and clear errors with file:line."""

from pathlib import Path

import pytest

from outreach.errors import SequenceError
from outreach.planner import Wait
from outreach.sequences import load_sequence, load_sequences, playbook_order

GOOD = """\
description: test
steps:
  - name: intro
    channel: email
    wait: 0 days
    template: t/1.yaml
  - name: nudge
    channel: email
    wait: 3-5 business days
    thread: reply
    template: t/2.yaml
"""


def load_text(tmp_path: Path, text: str, name: str = "cold") -> SequenceError:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(SequenceError) as info:
        load_sequence(path)
    return info.value


def test_shipped_sequences_follow_the_playbook(workspace_dir: Path) -> None:
    sequences, problems = load_sequences(workspace_dir / "sequences")
    assert problems == []
    cold, reminder, network = sequences["cold"], sequences["reminder"], sequences["network"]
    assert [s.channel for s in cold.steps] == ["email", "email", "linkedin"]
    assert cold.steps[1].thread == "reply"
    assert cold.steps[1].wait == Wait(3, 5, "business_days")
    assert cold.thread_root(1) == 0
    assert cold.next is not None and cold.next.sequence == "reminder"
    assert cold.next.wait.low >= 90 and cold.next.wait.high <= 186
    assert [s.channel for s in reminder.steps] == ["email", "email", "linkedin"]
    assert reminder.steps[1].thread == "reply"
    assert reminder.next is not None and reminder.next.sequence == "network"
    assert [s.channel for s in network.steps] == ["email", "linkedin"]
    assert network.next is None


def test_bad_wait_names_its_line(tmp_path: Path) -> None:
    error = load_text(tmp_path, GOOD.replace("3-5 business days", "soon"))
    assert error.line == 9
    assert error.field == "steps.1.wait"


def test_reply_needs_an_earlier_email(tmp_path: Path) -> None:
    text = GOOD.replace("channel: email\n    wait: 0 days", "channel: linkedin\n    wait: 0 days")
    error = load_text(tmp_path, text)
    assert "needs an earlier email step" in error.message
    assert error.line == 10


def test_unknown_key_and_missing_key(tmp_path: Path) -> None:
    error = load_text(tmp_path, GOOD.replace("thread: reply", "thred: reply"))
    assert error.message == "unknown key 'thred'" and error.line == 10
    error = load_text(tmp_path, GOOD.replace("    template: t/2.yaml\n", ""))
    assert error.message == "'template' is required" and error.line == 7


def test_duplicate_step_names(tmp_path: Path) -> None:
    error = load_text(tmp_path, GOOD.replace("name: nudge", "name: intro"))
    assert "used twice" in error.message and error.line == 7


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    error = load_text(tmp_path, GOOD + "  - name: [unclosed\n")
    assert error.line is not None and error.line >= 12
    assert error.message.startswith("YAML syntax")


def test_next_sequence_must_exist_and_audience_be_known(tmp_path: Path) -> None:
    (tmp_path / "cold.yaml").write_text(GOOD + "next:\n  sequence: nowhere\n  wait: 90-180 days\n")
    _, problems = load_sequences(tmp_path)
    assert len(problems) == 1
    assert problems[0].line == 13 and "'nowhere' does not exist" in problems[0].message
    error = load_text(
        tmp_path, GOOD + "next:\n  sequence: cold\n  wait: 9 days\n  audience: [liked]\n"
    )
    assert "unknown audience rule 'liked'" in error.message


def test_an_opened_audience_needs_open_tracking(tmp_path: Path) -> None:
    (tmp_path / "cold.yaml").write_text(
        GOOD + "next:\n  sequence: cold\n  wait: 9 days\n  audience: [no_reply, opened]\n"
    )
    _, problems = load_sequences(tmp_path)  # tracking off
    [problem] = problems
    assert problem.line == 15 and problem.field == "next.audience"
    assert "audience 'opened' needs [tracking] opens = true, which is off" in problem.message
    _, problems = load_sequences(tmp_path, tracking=(False, True))  # clicks alone: not enough
    assert len(problems) == 1
    _, problems = load_sequences(tmp_path, tracking=(True, False))
    assert problems == []


def test_name_must_match_file(tmp_path: Path) -> None:
    error = load_text(tmp_path, "name: warm\n" + GOOD)
    assert "differs from the file name" in error.message and error.line == 1


def test_playbook_order_follows_the_hand_offs(workspace_dir: Path) -> None:
    sequences, _ = load_sequences(workspace_dir / "sequences")
    assert playbook_order(sequences) == ["cold", "reminder", "network"]
