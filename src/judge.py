"""The explanation judge (paper 3.1.2, Appendix A) and a deterministic decision check.

Two views of an explanation, reported side by side:

* the **LLM judge**: the Appendix A prompt (user history, target item, ground-truth label,
  the explanation) answered with ``<br>RATING-n</br>``, n in 0..3. Real judges wander from
  the requested format ("Rating: 2", "**RATING-3**", echoes of the whole rubric), so the
  parser is tolerant, refuses to guess when an answer names several different ratings,
  and an unparseable answer is counted and re-asked (a follow-up turn, so the request and
  its cache key differ) up to ``cfg.explain.judge_retries`` times;
* a **deterministic check**, no LLM involved: the first yes/no-like decision phrase of the
  explanation compared with the label. It is what RATING-0 measures ("incorrect
  classification"), computed reproducibly, so a reader can see how much of a judge's score
  is the decision and how much is the prose.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.metrics import RATINGS

log = logging.getLogger(__name__)

#: Appendix A, Figure A1 (the paper's "¡br¿" is a PDF-extraction artefact of "<br>")
JUDGE_PROMPT = (
    "Please act as an impartial judge and evaluate the AI assistant's recommendation decision as well as "
    "decision explanation based on the user's purchase history, target item, and ground truth label. "
    "Assign a score according to the following four levels:\n\n"
    "RATING-0: Incorrect classification - The assistant fails to generate a correct recommendation decision.\n\n"
    "RATING-1: Correct classification, insufficient explanation - The assistant correctly makes the "
    "recommendation decision but provides no, few, or irrelevant explanations, or provides explanations with "
    "hallucination, some of which do not conform to the actual situation.\n\n"
    "RATING-2: Correct classification, acceptable explanation - The assistant correctly makes the "
    "recommendation decision and provides an explanation that is logically consistent and aligns with the "
    "user's history and target item. But the explanation still has minor imperfections such as lack of "
    "persuasiveness or informativeness.\n\n"
    "RATING-3: Correct classification, satisfying explanation - The assistant correctly makes the "
    "recommendation decision and provides a satisfactory explanation, including a summary of the user's "
    "historical behavior patterns and characteristics, as well as a thorough analysis of the consistency or "
    "inconsistency between user preferences and the target item.\n\n"
    "Please give your score in the form of <br>RATING</br>, for example, if the rating is 1, output "
    "<br>RATING-1</br>. Do not allow the length of the explanation to influence your evaluation. "
    "Be as objective as possible.\n\n"
    "Known information: User history: {history}, Target item: {item}, Label: {label}. "
    "Assistant's output: {explanation}"
)

#: the follow-up turn after an unparseable answer
REASK = (
    "Your answer did not contain a rating in the required form. Reply with the rating only, "
    "in the form <br>RATING-n</br> where n is 0, 1, 2 or 3."
)


def judge_messages(history_titles: Sequence[str], item_title: str, label: str, explanation: str) -> list[dict]:
    """The Appendix A prompt as one user turn; titles joined with "; " like every other prompt."""
    prompt = JUDGE_PROMPT.format(
        history="; ".join(history_titles), item=item_title, label=label, explanation=explanation.strip()
    )
    return [{"role": "user", "content": prompt}]


# --------------------------------------------------------------------------- rating parser

_NUM = r"(\d+(?:\.\d+)?)"
#: the requested form, also with the PDF's mangled brackets: <br>RATING-2</br>, <br>2</br>
_TAGGED = re.compile(r"[<¡]\s*br\s*/?\s*[>¿]\s*(?:\*\*|__)?\s*(?:RATING\s*[-–—:=_ ]?\s*)?" + _NUM, re.I)
#: RATING-2, Rating: 2, **RATING-3**, rating is 2, Rating = [2], RATING 1
_RATING = re.compile(r"\bRATING\b\s*(?:\*\*|__)?\s*(?:[-–—:=_]|is|of)?\s*(?:\*\*|__)?\s*[\[\(\"'`]?\s*" + _NUM, re.I)
#: Score: 2, score of 3, final score - 1, 2/3, 2 out of 3
_SCORE = re.compile(r"\bscore\b\s*(?:[-–—:=]|is|of)\s*(?:\*\*|__)?\s*" + _NUM, re.I)
_OUT_OF = re.compile(r"(?<![\d.])" + _NUM + r"\s*(?:/|out\s+of)\s*3\b", re.I)
#: the whole answer is a bare number ("2", "**2**", "2.")
_BARE = re.compile(r"^\W*" + _NUM + r"\W*$")
#: the rubric's own words for each level (Appendix A): an untagged answer that uses the words
#: of a level other than the rating it names is an echo of the rubric, not a verdict
#: ("RATING-0: Incorrect classification, insufficient explanation" mixes levels 0 and 1)
RUBRIC_PHRASES = {
    0: ("incorrect classification",),
    1: ("insufficient explanation",),
    2: ("acceptable explanation",),
    3: ("satisfying explanation",),
}


def _echoes_rubric(text: str, rating: int) -> bool:
    low = text.lower()
    return any(p in low for level, phrases in RUBRIC_PHRASES.items() if level != rating for p in phrases)


def _values(pattern: re.Pattern, text: str) -> list[str]:
    return [m.group(1) for m in pattern.finditer(text)]


def parse_rating(text: str | None) -> int | None:
    """The rating 0..3 in a judge's answer, or None when absent, out of range, or ambiguous.

    Forms are tried from most to least explicit (tagged ``<br>RATING-n</br>``, then
    ``RATING n`` variants, then ``score: n`` / ``n/3``, then a bare number). Within the first
    form that occurs, every occurrence must agree: an answer that quotes the whole rubric
    ("RATING-0 ... RATING-3") without a tagged verdict is ambiguous and gets re-asked rather
    than guessed, and so is an untagged rating next to another level's rubric words.
    """
    if not text or not text.strip():
        return None
    for pattern in (_TAGGED, _RATING, _SCORE, _OUT_OF, _BARE):
        found = _values(pattern, text)
        if not found:
            continue
        distinct = set(found)
        if len(distinct) != 1:
            return None
        (value,) = distinct
        if "." in value:
            return None
        n = int(value)
        if n not in RATINGS or (pattern is not _TAGGED and _echoes_rubric(text, n)):
            return None
        return n
    return None


# --------------------------------------------------------------------------- judging


def explanation_sha(text: str) -> str:
    """Identity of a judged explanation: a regenerated explanation is judged again."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class JudgeOutcome:
    rating: int | None
    answer: str | None
    #: requests made for this row (1 + re-asks)
    attempts: int
    #: the first answer could not be parsed
    first_unparseable: bool
    #: a request failed for good (network/server), nothing to cache
    failed: bool = False
    history: list[str] = field(default_factory=list)
    #: answers cut at max_tokens (finish_reason "length"): never read as a verdict, re-asked
    truncated: int = 0


def judge_many(
    client: Any, conversations: Sequence[list[dict]], retries: int, desc: str = "judge", **params: Any
) -> list[JudgeOutcome]:
    """Ask the judge for every conversation; re-ask unparseable answers up to `retries` times.

    Re-asks run in rounds over the still-unparsed rows, each extending its conversation with
    the judge's previous answer and :data:`REASK`, so each round is one batched call. An
    answer cut at ``max_tokens`` counts as unparsed whatever it contains (a verdict usually
    comes last, and what came before it may be the rubric quoted back).
    """
    convs = [list(c) for c in conversations]
    outcomes = [JudgeOutcome(None, None, 0, False) for _ in convs]
    todo = list(range(len(convs)))
    for round_ in range(retries + 1):
        if not todo:
            break
        replies = client.complete_many(
            [convs[i] for i in todo], desc=desc if round_ == 0 else f"{desc} re-ask {round_}", replies=True, **params)
        nxt = []
        for i, reply in zip(todo, replies):
            out = outcomes[i]
            out.attempts += 1
            if reply is None:
                out.failed = True
                continue
            ans = reply.text
            out.answer = ans
            out.history.append(ans)
            out.truncated += int(reply.truncated)
            out.rating = None if reply.truncated else parse_rating(ans)
            if out.rating is None:
                if round_ == 0:
                    out.first_unparseable = True
                convs[i] = convs[i] + [{"role": "assistant", "content": ans}, {"role": "user", "content": REASK}]
                nxt.append(i)
        todo = nxt
    return outcomes
