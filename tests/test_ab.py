"""The A/B test end to end: assignment, attribution, the review, the report, the digest, the cron.

Messages really leave through a real SMTP server (RecordingSMTP); replies go through the same
`inbox.apply_message` the IMAP poll uses; time moves with freezegun.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock, inbox
from outreach.ab import attribution, registry
from outreach.ab import report as abreport
from outreach.ab import review as ab_review
from outreach.ab import stats as abstats
from outreach.daemon import Daemon, review_trigger, send_once
from outreach.enroll import enroll_csv
from outreach.models import Decision, Message, Prospect, Review
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # Mon 4 Jan 2027 10:00 in Helsinki
INTRO = "templates/cold/1-intro.yaml"
NEW_SUBJECT = """
  - id: brand-new-angle
    en: "A brand new angle"
    fi: "Uusi kulma"
    sv: "En ny vinkel"
"""


@pytest.fixture
def smtp() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


@pytest.fixture
def ws(workspace_dir: Path, smtp: RecordingSMTP) -> Iterator[Workspace]:
    edit_config(
        workspace_dir / "outreach.toml",
        smtp_port=smtp.port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        daily_limit=1000,
        min_sends_per_variant=15,
        assignment="balanced",  # these tests seed equal counts; Thompson has its own test
        # The P(best) rule with the uniform prior: 20 sends a variant at reply rates far above
        # life decide there. The defaults (margin, pooled prior) are the simulation's and
        # test_abstats'; test_the_defaults_retire_a_clear_loser runs them end to end.
        retire_margin=0,
        prior_sends=0,
    )
    workspace = Workspace.load(workspace_dir / "outreach.toml")
    yield workspace
    workspace.close()


def reload(ws: Workspace) -> Workspace:
    """The workspace as a new command would load it (templates read again)."""
    ws.close()
    return Workspace.load(ws.config.path)


def enroll(ws: Workspace, tmp_path: Path, first: int, count: int) -> None:
    """Prospects p<first>..: each at a domain of their own, so no company-level pause."""
    path = tmp_path / f"list-{first}.csv"
    rows = "".join(f"p{i}@d{i}.example,P{i},en\n" for i in range(first, first + count))
    path.write_text("email,first_name,language\n" + rows, encoding="utf-8")
    result = enroll_csv(ws, path, "cold", now=clock.now(), rng=random.Random(first))
    assert result.applied and result.enrolled == count


def intro_messages(ws: Workspace) -> list[Message]:
    with ws.store.session() as session:
        return list(
            session.exec(select(Message).where(Message.sequence == "cold", Message.step_index == 0))
        )


def reply(ws: Workspace, to: Message, text: str, *, in_reply_to: bool = True) -> str:
    """Apply a reply from the prospect ``to`` was sent to, as the IMAP poll would."""
    msg = EmailMessage()
    with ws.store.session() as session:
        prospect = session.get(Prospect, to.prospect_id)
        assert prospect is not None
        msg["From"] = prospect.email
        msg["To"] = to.sender
        msg["Subject"] = "Re: " + (to.subject or "")
        msg["Message-ID"] = f"<r{random.random()}@{prospect.domain}>"
        if in_reply_to and to.message_id:
            msg["In-Reply-To"] = to.message_id
            msg["References"] = to.message_id
        msg.set_content(text)
        return inbox.apply_message(ws, session, msg, clock.now(), inbox.PollReport())


def by_variant(messages: list[Message], kind: str) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in messages:
        out.setdefault(getattr(m, f"{kind}_variant"), []).append(m)
    return out


# ------------------------------------------------------------------------------ assignment


def test_balanced_assignment_and_a_new_variant_gets_an_equal_share_from_then_on(
    ws: Workspace, tmp_path: Path
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        enroll(ws, tmp_path, 0, 40)
        assert len(send_once(ws, wait_for_gaps=False).sent) == 40
        first = Counter(m.subject_variant for m in intro_messages(ws))
        assert sorted(first.values()) == [10, 10, 10, 10]  # 4 subjects, equal counts
        assert Counter(m.body_variant for m in intro_messages(ws)) == {
            "direct-question": 20,
            "read-case": 20,
        }
        # The marketer adds a fifth subject: it gets 1/5 of the next prospects, not all of them.
        path = ws.config.root / INTRO
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("\nbodies:", NEW_SUBJECT + "\nbodies:", 1), encoding="utf-8")
        frozen.tick(timedelta(minutes=5))
        enroll(ws, tmp_path, 100, 25)  # the same workspace, as a running daemon holds it
        assert len(send_once(ws, wait_for_gaps=False).sent) == 25
    later = Counter(m.subject_variant for m in intro_messages(ws) if m.prospect_id > 40)
    assert later == {v: 5 for v in first} | {"brand-new-angle": 5}


def test_a_text_edited_after_it_was_sent_is_refused_with_its_line(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    path = ws.config.root / INTRO
    original = path.read_text(encoding="utf-8")
    # Before anything was sent, an edit is simply taken.
    with freeze_time(MONDAY_10, real_asyncio=True):
        enroll(ws, tmp_path, 0, 4)
        registry.check_variants(ws)
        edited = original.replace("Marketing and sales on the same numbers?", "Same numbers?")
        path.write_text(edited, encoding="utf-8")
        ws = reload(ws)
        assert len(send_once(ws, wait_for_gaps=False).sent) == 4
        # After it was sent, editing the English text of same-numbers is refused...
        path.write_text(edited.replace("Same numbers?", "Same numbers, really?"), encoding="utf-8")
        ws = reload(ws)
        line = 1 + edited.splitlines().index("  - id: same-numbers")
        result = run("validate")
        assert result.exit_code == 1
        assert f"{INTRO}:{line}: subject 'same-numbers' was edited after it was sent (en)" in (
            result.stderr
        )
        enroll(ws, tmp_path, 10, 2)
        sent = run("send", "--once", "--no-wait")
        assert sent.exit_code == 1 and "was edited after it was sent" in sent.stderr
        assert len(intro_messages(ws)) == 4  # nothing left with a mixed-up id
        # ...while a new language for it, or a new id, is fine.
        path.write_text(
            edited.replace('sv: "Marknad och sälj med samma siffror?"', 'sv: "Samma siffror?"'),
            encoding="utf-8",
        )
        assert run("send", "--once", "--no-wait").exit_code == 0


# ------------------------------------------------------------------------------ attribution


def test_a_reply_in_the_thread_counts_for_the_first_subject_and_the_last_body(
    ws: Workspace, tmp_path: Path
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        enroll(ws, tmp_path, 0, 2)
        send_once(ws, wait_for_gaps=False)
        frozen.tick(timedelta(days=8))
        send_once(ws, wait_for_gaps=False)  # the nudge, a reply in the same thread
        with ws.store.session() as session:
            nudges = list(session.exec(select(Message).where(Message.step_index == 1)))
        assert len(nudges) == 2 and all(m.state == "sent" for m in nudges)
        answered = nudges[0]
        assert reply(ws, answered, "Yes, tell me more.") == "reply"
        with ws.store.session() as session:
            tally = attribution.tallies(session, "positive_or_neutral")
            intro = session.exec(
                select(Message).where(
                    Message.prospect_id == answered.prospect_id, Message.step_index == 0
                )
            ).one()
    assert intro.subject_variant and intro.body_variant and answered.body_variant
    assert tally[("cold", 0, "subject")][intro.subject_variant].wins == 1
    assert tally[("cold", 1, "body")][answered.body_variant].wins == 1
    # The intro's body did not get the reply: the nudge came after it.
    assert sum(t.wins for t in tally[("cold", 0, "body")].values()) == 0
    assert sum(t.sends for t in tally[("cold", 0, "subject")].values()) == 2


def test_the_metric_skips_refusals_until_a_rep_corrects_the_class(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        enroll(ws, tmp_path, 0, 3)
        send_once(ws, wait_for_gaps=False)
        messages = intro_messages(ws)
        assert reply(ws, messages[0], "Not interested, thanks.") == "reply"
        assert reply(ws, messages[1], "Sounds good, call me.") == "reply"
        # A reply without In-Reply-To still counts, by its sender, for what they were sent.
        assert reply(ws, messages[2], "Hmm, what does it cost?", in_reply_to=False) == "reply"

    def wins(metric: str) -> int:
        with ws.store.session() as session:
            tally = attribution.tallies(session, metric)
        return sum(t.wins for t in tally[("cold", 0, "subject")].values())

    assert wins("positive_or_neutral") == 2  # the refusal is not a win
    assert wins("any_reply") == 3
    marked = run("prospect", "p0@d0.example", "--mark", "positive")
    assert marked.exit_code == 0 and "is now positive (was negative)" in marked.stdout
    assert wins("positive_or_neutral") == 3
    view = run.json("prospect", "p0@d0.example")
    assert [e["kind"] for e in view["events"]][-1] == "mark"
    bad = run("prospect", "p0@d0.example", "--mark", "great")
    assert bad.exit_code == 1 and "--mark: unknown reply class 'great'" in bad.stderr
    none = run("prospect", "p5@d5.example", "--mark", "positive")
    assert none.exit_code == 1


# ------------------------------------------------------------------------------ the review


def seed_results(ws: Workspace, tmp_path: Path, frozen, replies: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    """Send the intro to 80 prospects (20 per subject) on Monday, reply to the first ``n`` of
    each subject's messages an hour later, and move two weeks on: every send is older than
    [ab] reply_window_days, so each weighs 1."""
    enroll(ws, tmp_path, 0, 80)
    send_once(ws, wait_for_gaps=False)
    frozen.tick(timedelta(hours=1))
    for variant, messages in by_variant(intro_messages(ws), "subject").items():
        for message in messages[: replies.get(variant, 0)]:
            assert reply(ws, message, "Yes please, tell me more.") == "reply"
    frozen.tick(timedelta(days=14))


def test_review_retires_the_clear_loser_keeps_the_leader_and_records_the_numbers(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(
            ws,
            tmp_path,
            frozen,
            {"quick-question": 9, "same-numbers": 0, "idea-for-company": 6, "persona-outcome": 5},
        )
        dry = run.json("ab", "review", "--dry-run")
        with ws.store.session() as session:
            assert session.exec(select(Review)).all() == []  # a dry run records nothing
        result = run.json("ab", "review")
    assert dry["factors"][0]["decisions"] == result["factors"][0]["decisions"]
    subjects = {d["variant"]: d for d in result["factors"][0]["decisions"]}
    assert subjects["same-numbers"]["action"] == "retire"
    assert subjects["same-numbers"]["sends"] == 20 and subjects["same-numbers"]["replies"] == 0
    assert subjects["quick-question"]["action"] == "keep"
    assert "leader" in subjects["quick-question"]["reason"]
    assert subjects["quick-question"]["p_best"] > 0.5
    low, high = subjects["quick-question"]["interval"]
    assert low < 9 / 20 < high
    with ws.store.session() as session:
        stored = session.exec(select(Decision).where(Decision.variant == "same-numbers")).one()
    assert (stored.action, stored.sends, stored.wins) == ("retire", 20, 0)
    report = run.json("ab", "report")
    intro = next(s for s in report["steps"] if s["step"] == "intro" and s["kind"] == "subject")
    status = {v["variant"]: v["status"] for v in intro["variants"]}
    assert status["same-numbers"] == "retired" and status["quick-question"] == "active"
    assert intro["active"] == 3 and intro["wanted"] == 3
    # Retired variants get no new prospects.
    with freeze_time(MONDAY_10 + timedelta(days=4), real_asyncio=True):
        enroll(ws, tmp_path, 200, 12)
        send_once(ws, wait_for_gaps=False)
    new = Counter(m.subject_variant for m in intro_messages(ws) if m.prospect_id > 80)
    assert "same-numbers" not in new and sum(new.values()) == 12


def test_the_defaults_retire_a_clear_loser_and_keep_a_close_one(
    ws: Workspace, tmp_path: Path, workspace_dir: Path
) -> None:
    """The default rule: P(within 20 % of the best) < 0.05, the prior worth 50 sends at the
    pooled rate. 0 of 20 against 12 of 20 goes; 9 of 20 against 12 of 20 stays."""
    edit_config(workspace_dir / "outreach.toml", retire_margin=0.2, prior_sends=50)
    ws = reload(ws)
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 12, "idea-for-company": 9})
        result = ab_review.review(ws, clock.now(), dry_run=True)
    decisions = {d.variant: d for d in result.factors[0].decisions}
    for loser in ("same-numbers", "persona-outcome"):
        assert decisions[loser].action == "retire"
        assert decisions[loser].p_near is not None and decisions[loser].p_near < 0.05
        assert decisions[loser].reason.startswith("P(within 20% of the best) ")
    assert decisions["idea-for-company"].action == "keep"
    assert decisions["quick-question"].action == "keep"


def test_few_sends_are_never_retired_however_bad_they_look(
    ws: Workspace, tmp_path: Path, workspace_dir: Path
) -> None:
    edit_config(workspace_dir / "outreach.toml", min_sends_per_variant=21)
    ws = reload(ws)
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 12})
        result = ab_review.review(ws, clock.now())
    assert [d for f, d in result.retired if f.factor.kind == "subject"] == []
    reasons = [d.reason for d in result.factors[0].decisions if d.variant != "quick-question"]
    assert all("only 20 sends (< 21), kept" in r for r in reasons)


def test_the_digest_says_which_step_needs_new_copy_and_what_wins(
    ws: Workspace, tmp_path: Path, run: Cli, smtp: RecordingSMTP, workspace_dir: Path
) -> None:
    edit_config(workspace_dir / "outreach.toml", digest_to="marketing@northwind.example")
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(
            ws,
            tmp_path,
            frozen,
            {"quick-question": 10, "same-numbers": 0, "persona-outcome": 0, "idea-for-company": 8},
        )
        before = len(smtp.received)
        assert run("ab", "review").exit_code == 0
    digest = (workspace_dir / "ab-digest.md").read_text(encoding="utf-8")
    assert "## Needs new copy" in digest
    assert "cold/intro subjects: 2 active, at least 3 wanted: write 1 more subject" in digest
    assert "winning: 'quick-question' 10/20 = 50.0 %" in digest
    assert "'same-numbers': 0/20" in digest and "'persona-outcome': 0/20" in digest
    assert "network/" not in digest  # nothing sent there yet: nothing to say
    [mail] = [r for r in smtp.received[before:]]
    assert mail.rcpt_tos == ["marketing@northwind.example"]
    assert "need new copy" in str(mail.message["Subject"])
    assert "quick-question" in mail.message.get_body(("plain",)).get_content()
    validate = run("validate")
    assert "cold/intro has 2 active subjects, fewer than [ab] min_active_subjects = 3" in (
        validate.stdout + validate.stderr
    )


def test_restore_puts_a_retired_variant_back(ws: Workspace, tmp_path: Path, run: Cli) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 9})
        retired = [d.variant for _, d in ab_review.review(ws, clock.now()).retired]
        assert retired
        assert run("ab", "restore", "cold", "intro", "subject", retired[0]).exit_code == 0
        again = run("ab", "restore", "cold", "intro", "subject", retired[0])
        assert again.exit_code == 1 and "is not retired" in again.stderr
    report = run.json("ab", "report")
    intro = next(s for s in report["steps"] if s["step"] == "intro" and s["kind"] == "subject")
    assert {v["variant"]: v["status"] for v in intro["variants"]}[retired[0]] == "active"


def test_html_report_is_one_file_with_a_chart_per_step(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 5, "same-numbers": 1})
        ab_review.review(ws, clock.now())
        frozen.tick(timedelta(days=3))
        out = tmp_path / "report.html"
        result = run("ab", "report", "--html", str(out))
    assert result.exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<script" not in page
    # A chart for each factor with sends (the intro's subjects and bodies); the steps nothing
    # was sent for are folded into one line.
    assert page.count("<svg") == 2
    assert f"Not sent yet: {len(list(registry.factors(ws))) - 2} step factor(s)" in page
    assert "<h2>cold / nudge" not in page
    assert "quick-question" in page and "<polygon" in page  # line and interval band
    # The words beside the id: the subject as the sample prospect (Aino) reads it.
    assert "Quick question, Aino" in page
    assert "2027-01-18" in page  # the review's mark and point on the time axis
    assert "review 1 2027-01-18: retired " in page  # what the review decided, at its mark
    assert "reply rate (95 % interval)" in page and "date (UTC)" in page  # labelled axes
    assert "2.5–97.5 %" not in page  # a variant never sent has no point to draw


# ------------------------------------------------------------------------------ the cron


def test_the_review_cron_fires_monday_and_thursday_mornings_only(ws: Workspace) -> None:
    trigger = review_trigger(ws)
    fire = trigger.get_next_fire_time(None, datetime(2027, 1, 3, 12, 0, tzinfo=UTC))  # a Sunday
    fired = []
    while fire is not None and fire < datetime(2027, 1, 17, tzinfo=UTC):
        fired.append(fire)
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    assert [(f.strftime("%a"), f.hour, str(f.tzinfo)) for f in fired] == [
        ("Mon", 7, "Europe/Helsinki"),
        ("Thu", 7, "Europe/Helsinki"),
    ] * 2
    assert not any(f.strftime("%a") == "Tue" for f in fired)


def test_the_daemon_review_job_records_a_cron_review_and_writes_the_digest(
    ws: Workspace, tmp_path: Path
) -> None:
    import asyncio

    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 9})
        asyncio.run(Daemon(ws).review())
    with ws.store.session() as session:
        [row] = session.exec(select(Review)).all()
    assert row.trigger == "cron"
    assert (ws.config.root / "ab-digest.md").exists()
    assert row.settings == {
        "min_sends_per_variant": 15,
        "retire_below_probability": 0.05,
        "retire_margin": 0,
        "prior_sends": 0,
        "reply_window_days": 14,
        "assignment": "balanced",
        "horizon_days": 182,
    }


def test_thompson_assignment_sends_most_new_prospects_to_the_likely_winner(
    ws: Workspace, tmp_path: Path, workspace_dir: Path
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 12, "same-numbers": 1})
        edit_config(workspace_dir / "outreach.toml", assignment="thompson")
        ws = reload(ws)
        enroll(ws, tmp_path, 300, 30)
        send_once(ws, wait_for_gaps=False)
    new = Counter(m.subject_variant for m in intro_messages(ws) if m.prospect_id > 80)
    assert sum(new.values()) == 30
    # Beta(13, 9) against three posteriors near zero: the others win a draw almost never.
    assert new["quick-question"] >= 27


def test_index_assignment_splits_new_prospects_between_the_leaders_and_skips_the_rest(
    ws: Workspace, tmp_path: Path, workspace_dir: Path
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 6, "same-numbers": 6})
        edit_config(workspace_dir / "outreach.toml", assignment="index")  # the default
        ws = reload(ws)
        with ws.store.session() as session:
            tallies = attribution.tallies(session, "positive_or_neutral", clock.now(), 14)
        # 80 sends over the 14 days and an hour since the first: the horizon is 182 days of that.
        assert tallies.pace(("cold", 0, "subject")) == pytest.approx(80 / (14 + 1 / 24))
        enroll(ws, tmp_path, 300, 30)
        send_once(ws, wait_for_gaps=False)
    new = Counter(m.subject_variant for m in intro_messages(ws) if m.prospect_id > 80)
    # 6/20 and 6/20 against 0/20 twice: the two leaders alternate, each choice counting for
    # the next until the tallies are read again; the silent two get none.
    assert new == {"quick-question": 15, "same-numbers": 15}


# ------------------------------------------------------------------------------ review findings


def test_retiring_the_last_subject_holds_the_messages_and_validate_says_so(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 12})
        ab_review.review(ws, clock.now())  # the other three subjects go
        path = ws.config.root / INTRO
        text = path.read_text(encoding="utf-8")
        # The first variant left in the file once `retired: true` is added above it.
        line = 2 + text.splitlines().index("  - id: same-numbers")
        # The marketer retires the leader in the file: no subject is left for the intro.
        path.write_text(
            text.replace("  - id: quick-question\n", "  - id: quick-question\n    retired: true\n"),
            encoding="utf-8",
        )
        enroll_csv_path = tmp_path / "more.csv"
        enroll_csv_path.write_text("email,language\nnew@d900.example,en\n", encoding="utf-8")
        refused = run("enroll", str(enroll_csv_path), "--sequence", "cold")
        assert refused.exit_code == 1 and "no active subject" in refused.output
        validate = run("validate")
        assert validate.exit_code == 1
        assert f"{INTRO}:{line}: " in validate.stderr  # at the first variant the review took
        assert "every active subject in the file was retired by an A/B review" in (validate.stderr)
        # Someone already enrolled whose intro is due now: held, not sent, not stopped.
        path.write_text(text, encoding="utf-8")
        enroll(ws, tmp_path, 500, 1)
        path.write_text(
            text.replace("  - id: quick-question\n", "  - id: quick-question\n    retired: true\n"),
            encoding="utf-8",
        )
        sent = run("send", "--once", "--no-wait")
        assert sent.exit_code == 1
        assert "1 message(s) held, not sent: " in sent.stderr
        assert "no active subject variant" in sent.stderr
        view = run.json("prospect", "p500@d500.example")
        assert view["enrollments"][0]["state"] == "active"
        # The copy is fixed (the leader is back): the held intro goes at a later run.
        path.write_text(text, encoding="utf-8")
        frozen.tick(timedelta(minutes=20))
        assert run("send", "--once", "--no-wait").exit_code == 0
    view = run.json("prospect", "p500@d500.example")
    assert [m["state"] for m in view["messages"]] == ["sent"]


def test_young_sends_weigh_by_the_chance_their_reply_has_come(
    ws: Workspace, tmp_path: Path
) -> None:
    """A send of yesterday is not 'not sent': it weighs the share of replies that come within
    a day; an answered one weighs 1; after [ab] reply_window_days every send weighs 1."""
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        enroll(ws, tmp_path, 0, 80)
        send_once(ws, wait_for_gaps=False)
        [first, *_] = by_variant(intro_messages(ws), "subject")["quick-question"]
        assert reply(ws, first, "Yes please, tell me more.") == "reply"
        frozen.tick(timedelta(days=1))
        fresh = abreport.report(ws, clock.now())
        frozen.tick(timedelta(days=13, minutes=1))
        old = abreport.report(ws, clock.now())

    def subjects(report: dict) -> dict:  # type: ignore[type-arg]
        intro = next(s for s in report["steps"] if s["step"] == "intro" and s["kind"] == "subject")
        return {v["variant"]: v for v in intro["variants"]}

    # No delays of its own yet: the prior's share of replies within a day (its sends are a
    # few seconds more than a day old, and the curve is a step function of days).
    share = float(abstats.reply_delays([], 14).weight(1.0))
    assert 0 < share < 1
    young = subjects(fresh)
    assert {v["sends"] for v in young.values()} == {20}
    assert young["same-numbers"]["weighted_sends"] == pytest.approx(20 * share, abs=1e-3)
    assert young["quick-question"]["weighted_sends"] == pytest.approx(1 + 19 * share, abs=1e-3)
    assert young["quick-question"]["rate"] == pytest.approx(1 / (1 + 19 * share), abs=1e-6)
    assert all(v["weighted_sends"] == 20 for v in subjects(old).values())
    assert subjects(old)["quick-question"]["rate"] == pytest.approx(1 / 20)


def test_reply_delays_are_learnt_from_the_workspaces_own_replies(
    ws: Workspace, tmp_path: Path
) -> None:
    """Replies to messages older than the window teach the curve; the report says so."""
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        enroll(ws, tmp_path, 0, 40)
        send_once(ws, wait_for_gaps=False)
        frozen.tick(timedelta(days=5))  # every reply comes five days after its message
        for message in intro_messages(ws)[:30]:
            assert reply(ws, message, "Yes please, tell me more.") == "reply"
        frozen.tick(timedelta(days=10))
        report = abreport.report(ws, clock.now())
    delays = report["reply_delays"]["subject"]
    assert delays["own_replies"] == 30
    # 30 own delays of 5 days against the prior's 20: the median moves to 5 days, and fewer
    # than the prior's 80 % come within three days.
    assert 4.9 < delays["median_days"] < 5.1
    assert delays["within_3_days"] == pytest.approx(16 / 50)


def test_a_restored_variant_gets_a_fresh_trial(ws: Workspace, tmp_path: Path, run: Cli) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(
            ws, tmp_path, frozen, {"quick-question": 9, "idea-for-company": 6, "persona-outcome": 5}
        )
        # The subjects' figures are seeded; the bodies are split at random and may lose too.
        retired = ab_review.review(ws, clock.now()).retired
        assert [d.variant for f, d in retired if d.sends and f.factor.kind == "subject"] == [
            "same-numbers"
        ]
        assert run("ab", "restore", "cold", "intro", "subject", "same-numbers").exit_code == 0
        frozen.tick(timedelta(days=4))
        again = ab_review.review(ws, clock.now())
    decision = next(d for d in again.factors[0].decisions if d.variant == "same-numbers")
    assert decision.action == "keep"
    assert "restored" in decision.reason and "only 0 sends since" in decision.reason


def test_a_meeting_counts_as_a_win_and_a_rep_recorded_reply_is_exported(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        enroll(ws, tmp_path, 0, 4)
        send_once(ws, wait_for_gaps=False)
        assert run("stop", "p0@d0.example", "--reason", "meeting").exit_code == 0
        assert run("stop", "p1@d1.example", "--reason", "replied").exit_code == 0
        frozen.tick(timedelta(days=4))
        with ws.store.session() as session:
            tally = attribution.tallies(
                session, "positive_or_neutral", attribution.mature_until(ws, clock.now())
            )
    assert sum(t.wins for t in tally[("cold", 0, "subject")].values()) == 2
    exported = run.json("export", "--replied")
    rows = exported if isinstance(exported, list) else exported["replied"]
    assert sorted(r["email"] for r in rows) == ["p0@d0.example", "p1@d1.example"]


def test_marking_a_reply_as_unsubscribe_suppresses_the_address(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        enroll(ws, tmp_path, 0, 1)
        send_once(ws, wait_for_gaps=False)
        assert reply(ws, intro_messages(ws)[0], "Maybe later.") == "reply"
    assert run("prospect", "p0@d0.example", "--mark", "unsubscribe").exit_code == 0
    values = [s["value"] for s in run.json("suppressions")]
    assert values == ["p0@d0.example"]


def test_report_and_digest_failures_are_one_line(
    ws: Workspace, tmp_path: Path, run: Cli, workspace_dir: Path
) -> None:
    html = run("ab", "report", "--html", str(tmp_path / "no" / "such" / "dir.html"))
    assert html.exit_code == 1 and "cannot write the HTML report" in html.stderr
    assert "Traceback" not in html.output
    edit_config(workspace_dir / "outreach.toml", digest_file="no/such/dir/digest.md")
    review = run("ab", "review")
    assert review.exit_code == 1
    assert "review 1 recorded, but digest not written to" in review.stderr
    edit_config(workspace_dir / "outreach.toml", digest_to="not-an-email")
    bad = run("ab", "review")
    assert bad.exit_code == 1 and "ab.digest_to" in bad.stderr
    assert "outreach.toml:" in bad.stderr


def test_validate_lists_the_variants_a_review_retired_as_it_lists_retired_true(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(
            ws,
            tmp_path,
            frozen,
            {"quick-question": 9, "same-numbers": 0, "idea-for-company": 6, "persona-outcome": 5},
        )
        review = run.json("ab", "review")
        path = ws.config.root / INTRO
        text = path.read_text(encoding="utf-8")
        # The marketer retires another subject in the file (and adds one, to keep three).
        path.write_text(
            text.replace(
                "  - id: persona-outcome\n", "  - id: persona-outcome\n    retired: true\n"
            ).replace("subjects:\n", "subjects:" + NEW_SUBJECT, 1),
            encoding="utf-8",
        )
        validate = run("validate")
    assert validate.exit_code == 0, validate.stderr
    lines = path.read_text(encoding="utf-8").splitlines()
    same, persona = (lines.index(f"  - id: {v}") + 1 for v in ("same-numbers", "persona-outcome"))
    decisions = {d["variant"]: d["action"] for d in review["factors"][0]["decisions"]}
    assert decisions["same-numbers"] == "retire"
    retired = [row for row in validate.stdout.splitlines() if row.startswith("retired: ")]
    assert retired == [
        f"retired: {INTRO}:{same}: cold/intro subject 'same-numbers' "
        f"(review {review['review']}, 2027-01-18)",
        f"retired: {INTRO}:{persona}: cold/intro subject 'persona-outcome' "
        "(retired: true in the file)",
    ]


# ------------------------------------------------------------------------------ the report


def test_report_breaks_a_step_down_by_language_without_calling_it_on_too_little(
    ws: Workspace, tmp_path: Path, run: Cli
) -> None:
    """Half the prospects Finnish, half English: each variant's figures per language add up
    to its total; P(best) per language only where every variant has min_sends there."""
    path = tmp_path / "mixed.csv"
    rows = "".join(f"p{i}@d{i}.example,P{i},{'fi' if i % 2 else 'en'}\n" for i in range(80))
    path.write_text("email,first_name,language\n" + rows, encoding="utf-8")
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        assert enroll_csv(ws, path, "cold", now=clock.now(), rng=random.Random(1)).enrolled == 80
        send_once(ws, wait_for_gaps=False)
        messages = by_variant(intro_messages(ws), "subject")
        finnish = [m for m in messages["quick-question"] if m.language == "fi"]
        for message in finnish[:4]:
            assert reply(ws, message, "Kyllä kiitos, kertokaa lisää.") == "reply"
        frozen.tick(timedelta(days=15))
        data = run.json("ab", "report")
        text = run("ab", "report").stdout
    intro = next(s for s in data["steps"] if s["step"] == "intro" and s["kind"] == "subject")
    segments = {seg["language"]: seg for seg in intro["segments"]}
    assert set(segments) == {"en", "fi"}
    for v in intro["variants"]:
        per = [
            next(x for x in seg["variants"] if x["variant"] == v["variant"])
            for seg in segments.values()
        ]
        assert sum(x["sends"] for x in per) == v["sends"] == 20
        assert sum(x["replies"] for x in per) == v["replies"]
    fi_quick = next(x for x in segments["fi"]["variants"] if x["variant"] == "quick-question")
    assert fi_quick["replies"] == 4
    # 10 sends per variant per language, under min_sends_per_variant = 15: no call there.
    assert not segments["fi"]["enough_data"]
    assert all(x["p_best"] is None for x in segments["fi"]["variants"])
    assert "fi:  (too few sends to call here" in text
    # The words beside the ids, and the steps nothing was sent for folded into one line.
    assert '"Quick question, Aino"' in text
    assert "\nnot sent yet: " in text and "cold/nudge bodies" in text.split("not sent yet: ")[1]
    assert "\ncold/nudge bodies" not in text


def test_the_digest_keeps_a_running_history(
    ws: Workspace, tmp_path: Path, run: Cli, workspace_dir: Path
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 9, "idea-for-company": 6})
        assert run("ab", "review").exit_code == 0
        first = (workspace_dir / "ab-digest.md").read_text(encoding="utf-8")
        frozen.tick(timedelta(days=3))
        assert run("ab", "review").exit_code == 0
    digest = (workspace_dir / "ab-digest.md").read_text(encoding="utf-8")
    # The newest review on top, the first one kept whole below it.
    assert digest.count("# A/B review ") == 2
    assert digest.index("# A/B review 2027-01-21") < digest.index("# A/B review 2027-01-18")
    assert digest.endswith(first)
