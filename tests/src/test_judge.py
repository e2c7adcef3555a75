"""Rating parser, deterministic decision check, and the judge loop against a real HTTP server."""

from __future__ import annotations

import pytest

from core.api_client import ChatClient
from core.metrics import decision_of, decision_summary, rating_summary
from src.judge import JUDGE_PROMPT, REASK, judge_many, judge_messages, parse_rating
from tests.fixtures_explan import FakeOpenAI, clear_api_env, tiny_cfg


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    clear_api_env(monkeypatch)


RATING_CASES = [
    ("<br>RATING-2</br>", 2),
    ("The explanation is thorough. <br>RATING-3</br>", 3),
    ("¡br¿RATING-1¡/br¿", 1),  # the PDF's mangled brackets
    ("<br> RATING - 0 </br>", 0),
    ("<br>2</br>", 2),
    ("Rating: 2", 2),
    ("rating:2", 2),
    ("**RATING-3**", 3),
    ("RATING: **1**", 1),
    ("Final rating is 2.", 2),
    ("RATING 1", 1),
    ("Rating = [2]", 2),
    ("Score: 3", 3),
    ("I would give this a 2 out of 3.", 2),
    ("2/3", 2),
    ("2", 2),
    ("**0**", 0),
    ("RATING-2\n\nThe assistant correctly says yes. Overall RATING-2.", 2),
    # the rubric echoed, then the tagged verdict: the tag decides
    ("RATING-0: wrong. RATING-1: weak. RATING-2: ok. RATING-3: great.\nMy verdict: <br>RATING-2</br>", 2),
    # several different untagged ratings: ambiguous, re-ask rather than guess
    ("It is RATING-1 rather than RATING-3.", None),
    ("RATING-4", None),
    ("<br>RATING-5</br>", None),
    ("RATING-2.5", None),
    ("<br>RATING</br>", None),
    ("The explanation is acceptable but not persuasive.", None),
    ("", None),
    (None, None),
    ("ratings vary across users: 12 items", None),
    # an echo of the rubric mixing two levels' words is not a verdict (seen from a real server)
    ("RATING-0: Incorrect classification, insufficient explanation", None),
    ("RATING-1: Correct classification, insufficient explanation", 1),
    ("RATING-0: Incorrect classification - the user would not like it.", 0),
    # a tagged verdict after a quoted rubric still decides
    ("RATING-1: Correct classification, insufficient explanation ... <br>RATING-2</br>", 2),
]


@pytest.mark.parametrize("text,expected", RATING_CASES)
def test_parse_rating_table(text, expected):
    assert parse_rating(text) == expected


DECISION_CASES = [
    ("Yes, the user will like the item because they watch comedies.", "Yes"),
    ("No. The user mostly watches horror films.", "No"),
    ("**Answer: No**\nThe user has no explicit interest in musicals.", "No"),
    ("Yes the user would enjoy it.", "Yes"),
    ("The user has no explicit engagement with dramas, but will like this comedy.", "Yes"),
    ("Based on the history, the user would not like Titanic.", "No"),
    ("The user won't enjoy this item; they prefer action.", "No"),
    ("The user is unlikely to like the item.", "No"),
    ("The user is likely to enjoy the item given their love of sci-fi.", "Yes"),
    ("I would recommend this movie to the user.", "Yes"),
    ("I would not recommend this movie. Yes, it is popular, but...", "No"),
    ("This item is a good fit for the user.", "Yes"),
    ("This item is not a good fit for the user.", "No"),
    ("The item isn't a good match.", "No"),
    ("The user may not like this. However some users will like it.", "No"),
    ("The user has watched many comedies and dramas.", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", DECISION_CASES)
def test_decision_of_table(text, expected):
    assert decision_of(text) == expected


def test_summaries():
    s = rating_summary([3, 2, 2, None, 0])
    assert s["n_rated"] == 4 and s["mean"] == pytest.approx(7 / 4)
    assert s["counts"] == {"0": 1, "1": 0, "2": 2, "3": 1} and s["shares"]["2"] == 0.5
    assert rating_summary([None])["mean"] is None
    d = decision_summary(["Yes, sure.", "No.", "Hmm, hard to say.", "The user will like it."], ["Yes", "Yes", "No", "no"])
    assert (d["agree"], d["undecided"], d["said_yes"], d["said_no"]) == (1, 1, 2, 1)
    assert d["agreement"] == 0.25
    # Wilson interval of 1 agreement in 4 (textbook: [0.046, 0.699])
    assert d["agreement_ci95"] == pytest.approx([0.0456, 0.6994], abs=1e-4)
    # per label: of the two Yes-labelled prompts one says Yes; of the two No-labelled, none says No
    assert (d["agreement_on_yes"], d["agreement_on_no"]) == (0.5, 0.0)
    # an explainer that always says Yes agrees with half of a balanced set and reads nothing
    always = decision_summary(["Yes."] * 4, ["Yes", "No", "Yes", "No"])
    assert always["agreement"] == 0.5 and (always["agreement_on_yes"], always["agreement_on_no"]) == (1.0, 0.0)
    assert decision_summary(["Yes."], ["Yes"])["agreement_on_no"] is None  # no No-labelled prompt


def test_judge_prompt_is_appendix_a():
    msgs = judge_messages(["Toy Story (1995)", "Heat (1995)"], "Casino (1995)", "No", " No, the user... ")
    (m,) = msgs
    assert m["role"] == "user"
    text = m["content"]
    assert text.startswith("Please act as an impartial judge")
    assert "output <br>RATING-1</br>" in text and "Be as objective as possible." in text
    assert text.endswith(
        "Known information: User history: Toy Story (1995); Heat (1995), Target item: Casino (1995), "
        "Label: No. Assistant's output: No, the user..."
    )
    assert JUDGE_PROMPT.count("RATING-") == 5


_FLAKY_SEEN: set[int] = set()


def _script(body: dict, n: int):
    """Judge answers chosen by the explanation in the prompt; re-asks are recognised."""
    first = body["messages"][0]["content"]
    reask = body["messages"][-1]["content"] == REASK
    if "GOOD" in first:
        return 200, "Thorough and correct. <br>RATING-3</br>"
    if "OKAY" in first:
        return 200, "**Rating: 2**"
    if "MALFORMED" in first:
        return 200, "<br>RATING-1</br>" if reask else "It is a decent answer, between RATING-1 and RATING-2."
    if "FLAKY" in first:
        if not _FLAKY_SEEN:  # the first FLAKY request of the test is rate limited
            _FLAKY_SEEN.add(n)
            return 429, "rate limited"
        return 200, "RATING-0"
    return 200, "I cannot rate this."  # HOPELESS: never parseable


def test_judge_against_server_retries_reasks_and_cache(tmp_path):
    _FLAKY_SEEN.clear()
    with FakeOpenAI(_script) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=judge", "api.max_concurrency=1")
        env = {"OPENAI_API_KEY": "sk-x"}
        convs = [judge_messages(["A"], "B", "Yes", e) for e in ("GOOD", "OKAY", "MALFORMED", "FLAKY", "HOPELESS")]
        client = ChatClient(cfg, environ=env)
        outs = judge_many(client, convs, retries=2)
        assert [o.rating for o in outs] == [3, 2, 1, 0, None]
        assert [o.first_unparseable for o in outs] == [False, False, True, False, True]
        assert [o.attempts for o in outs] == [1, 1, 2, 1, 3]
        assert not any(o.failed for o in outs)
        # GOOD 1 + OKAY 1 + MALFORMED 2 + FLAKY (429 then ok) 2 + HOPELESS 3
        assert len(srv.requests) == 9
        reasked = [r for r in srv.requests if r["messages"][-1]["content"] == REASK]
        assert len(reasked) == 3 and all(r["messages"][-2]["role"] == "assistant" for r in reasked)

        again = judge_many(ChatClient(cfg, environ=env), convs, retries=2)
        assert [o.rating for o in again] == [3, 2, 1, 0, None]
        assert len(srv.requests) == 9  # the second run is served from the cache


def test_truncated_answer_is_reasked_never_a_verdict(tmp_path):
    """A judge answer cut at max_tokens (finish_reason "length") is not read even when it
    contains a rating: the rating-only follow-up is asked instead."""
    from tests.fixtures_explan import completion

    def responder(body: dict, n: int):
        if body["messages"][-1]["content"] == REASK:
            return 200, "<br>RATING-2</br>"
        out = completion("RATING-0: Incorrect classification - The assistant fails to", body["model"])
        out["choices"][0]["finish_reason"] = "length"
        return 200, out

    with FakeOpenAI(responder) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=judge")
        (out,) = judge_many(ChatClient(cfg, environ={}), [judge_messages(["A"], "B", "Yes", "Yes.")], retries=2,
                            max_tokens=16)
        assert (out.rating, out.truncated, out.attempts, out.first_unparseable) == (2, 1, 2, True)
        assert srv.requests[0]["max_tokens"] == 16
