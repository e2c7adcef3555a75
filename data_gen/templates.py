"""Every prompt template of the alignment data, in one place.

Figure B2 of the paper (Appendix B.1) lists the user questions of tasks 1, 2, 3, 4 and 6
(history reconstruction); they are reproduced here verbatim, with only the PDF
extraction artefacts repaired (missing opening quotes, the curly quotes themselves).
The explanation instruction is the one of section 3.1.2, word for word.

Three families are NOT printed in the paper and are written here in the same style,
because the paper names the tasks but not their wording:
  * ``description2iid`` / ``feature2iid`` -- the reverse of item discrimination
    (text -> title), behaviour form only;
  * ``uid2summary`` -- history -> preference summary (task 6, second half);
  * ``SUMMARY_REQUEST`` -- the request that asks the API model (GPT-4 in the paper,
    section 2.3) for each user's preference summary.

Placeholders (``str.format`` fields):
  ``{history}``  the user history: titles, ``<user>``, or ``<user>`` followed by titles
  ``{items}``    task 2's candidate list (``; ``-joined, one entry per candidate)
  ``{item}``     one item: title, ``<item>``, or ``<item>`` followed by the title
  ``{field}`` / ``{Field}``  task 4's attribute name (lower case / capitalised)
  ``{value}``    task 4 reverse: the attribute text

Only the user turn lives here; the assistant turn of every template is the bare answer
({ITEM TITLE}, {SORTED ITEM TITLES}, {YES/NO}, ...), so it needs no template.
"""

from __future__ import annotations

import random
import re
import string
from typing import Sequence

from core.registry import ITEM_TOKEN, USER_TOKEN  # noqa: F401 (defined once, in the registry)

#: separator of titles (and of list answers) everywhere, per DESIGN.md
SEP = "; "

# ----------------------------------------------------------------- Figure B2, task 1
#: Next item retrieval. Assistant: {ITEM TITLE}
UID2NEXT: tuple[str, ...] = (
    "Given the user purchase history: {history} , generate the next most likely clicked item title.",
    "What is the next most likely clicked item title for the purchase history: {history} ?",
    "Predict the item that the user with this history: {history} might like next.",
    "Considering the purchasing history: {history} , what will be the next item the user click on?",
    "Based on the buying history {history} , what item is the user likely to click on next?",
    "With the given purchase records {history} , can you determine the next item the user will click?",
    "What item is expected to be clicked next by a user who has this purchase history: {history} ?",
    "Generate the next probable clicked item for a user with the purchase history: {history} .",
    "For a user with the following purchase background: {history} , which item will he most likely click next?",
)

# ----------------------------------------------------------------- Figure B2, task 2
#: Item ranking. Assistant: {SORTED ITEM TITLES}
UIDIID2RANK: tuple[str, ...] = (
    "Given the user history: {history} and next items to be ranked: {items} , generate the sorted item titles from the user's favorite to least favorite.",
    "Considering user: {history} and some items he might like next: {items} , provide a ranking list of them according to the user preference.",
    "Please rank the following items: {items} from what the user likes to dislikes. Here is the user history: {history} .",
    "For user with purchase history: {history} , please arrange these items in order of preference: {items} .",
    "Taking into account user's history: {history} , create a list of the items: {items} ranked by the user's interests.",
    "With the user's purchase history given: {history} , sort the items: {items} based on the user's taste from best to worst.",
    "Based on the purchase history: {history} , please provide a ranking of the following items: {items} according to the user's preferences.",
    "Given user's past history: {history} , rank these items: {items} from most to least appealing.",
    "Using the provided user purchase history: {history} , generate a ranked list of items: {items} in accordance with the user's likes and dislikes.",
)

# ----------------------------------------------------------------- Figure B2, task 3
#: Interest classification. Assistant: {YES/NO}
UIDIID2BINARY: tuple[str, ...] = (
    "The user has the following purchase history: {history} . Will the user like the item: {item} ?",
    "Considering user: {history} and item: {item} , will the user like the item?",
    "Here is the user history: {history} . Do you think the user will prefer the item: {item} ?",
    "User's purchase records are: {history} . Can you tell if the user will enjoy item: {item} ?",
    "Given the purchase background of the user: {history} , would the user appreciate the item: {item} ?",
    "The buyer has this purchase history: {history} . Would the user be interested in the product: {item} ?",
    "With the following purchasing history for the user: {history} , can we predict if the user will like item: {item} ?",
    "Here's the customer's buying log: {history} . Would you say the user might favor the item: {item} ?",
)

# ----------------------------------------------------------------- Figure B2, task 4
#: Item discrimination. Assistant: {TITLE/DESCRIPTION/TAGS/SIMILAR ITEM TITLE/BRAND/FEATURE}
ITEM_DISCRIMINATION: tuple[str, ...] = (
    "What is the {field} of the item: {item} ?",
    "Given the item: {item} , generate its {field}.",
    "For the item: {item} , what is its {field}?",
    "Can you tell me the {field} of the item: {item} ?",
    "Please generate the {field} of the item: {item} .",
    "{Field} of the item: {item} ?",
    "Item: {item} , what is its {field}?",
    "Could you generate the {field} for the item: {item} ?",
)

#: task 4 attribute -> the word Figure B2 uses for it
FIELD_NAMES: dict[str, str] = {
    "title": "title",
    "description": "description",
    "tags": "tags",
    "sim": "similar item title",
    "brand": "brand",
    "feature": "feature",
}

# ----------------------------------------------------------------- Figure B2, task 6
#: History reconstruction. Assistant: {USER HISTORY TITLES}
UID2HIST: tuple[str, ...] = (
    "What are the history titles of the user: {history} ?",
    "Given the user purchase history: {history} , generate the history titles.",
    "Generate the titles of the user history: {history} .",
    "Show me the history titles for the user: {history} .",
    "Can you list the titles in the purchase history of the user: {history} ?",
    "Please generate the titles from the user's purchase history: {history} .",
    "List the titles in the purchase history for user: {history} .",
    "What titles can be found in user's purchase history: {history} ?",
)

# ----------------------------------------------- not in Figure B2 (see module docstring)
#: Task 4 reverse (description2iid, feature2iid), behaviour form. Assistant: {ITEM TITLE}
ITEM_REVERSE: tuple[str, ...] = (
    "Which item has the {field}: {value} ? Give its title.",
    "Given the {field}: {value} , generate the item title.",
    "What is the title of the item with this {field}: {value} ?",
    "Generate the title of the item described by the {field}: {value} .",
    "Here is the {field} of an item: {value} . What is the item?",
    "Name the item whose {field} is: {value} .",
)

#: Task 6, preference summary. Assistant: {SUMMARY}
UID2SUMMARY: tuple[str, ...] = (
    "Summarize the preferences of the user: {history} .",
    "Given the user purchase history: {history} , write a short summary of the user's preferences.",
    "What are the preferences of the user with this history: {history} ?",
    "Describe the tastes of a user with the purchase history: {history} .",
    "Based on the purchase history {history} , summarize the patterns and traits of the user.",
    "Can you give a preference summary for the user: {history} ?",
)

#: The request sent to the API model for each user's summary (paper 2.3: "a preference
#: summary for each user based on user history titles")
SUMMARY_REQUEST: str = (
    "Here is a user's purchase history, oldest first: {history} . "
    "Write a concise summary of this user in under 100 words that highlights the patterns and "
    "traits of the past items, so that it helps to identify the user's preferences and to "
    "predict future choices. Do not mention any future prediction in the summary."
)

# ----------------------------------------------------------------- section 3.1.2
#: Explanation instruction (paper 3.1.2, verbatim). Filled per form like task 3.
EXPLANATION: str = (
    "The user has the following purchase history: {history} . Will the user like the item: {item} ? "
    "Please give your answer and explain why you make this decision from the perspective of a "
    "recommender model. Your explanation should include the following aspects: summary of patterns "
    "and traits from user purchase history, the consistency or inconsistency between user "
    "preferences and the item."
)

# ----------------------------------------------------------------- task 5 stand-in
#: General instructions for the offline ShareGPT stand-in (``data_gen.sharegpt_replay``):
#: the base LLM answers them once (src.replay) and those answers are replayed as task-5
#: conversations. Not from the paper (it uses ShareGPT); written here so that the answers
#: are open-ended prose about the catalogue, the skill an explanation needs. The last two
#: ask for a judgement *and* its reasons, the shape of the explanation prompt (3.1.2):
#: without them a small model trained on Yes/No answers replies to that prompt with a bare
#: "Yes". Their judgements are the base LLM's own taste, never the recommender's.
#: Slots: {title}, {tags}, {titles} (three titles), {other}.
REPLAY: tuple[str, ...] = (
    "Tell me about {title}. What is it about, and what makes it worth a look?",
    "Write a short review of {title} ({tags}).",
    "What kind of person would enjoy {title}? Explain your reasoning.",
    "Someone recently enjoyed {titles}. Describe what these have in common and what it says about their taste.",
    "Compare {title} and {other}: how are they similar, and how do they differ?",
    "Describe the typical traits of {tags} titles, using {title} as an example.",
    "Would someone who enjoyed {titles} also enjoy {title}? Give your answer and explain why, "
    "from what these titles have in common.",
    "A friend liked {titles}. Should they try {title} ({tags})? Answer, then explain your reasoning.",
)

#: templates per record type (task 4 types share one list; reverse types share another)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "uid2next": UID2NEXT,
    "uidiid2rank": UIDIID2RANK,
    "uidiid2binary": UIDIID2BINARY,
    "iid2title": ITEM_DISCRIMINATION,
    "iid2description": ITEM_DISCRIMINATION,
    "iid2tags": ITEM_DISCRIMINATION,
    "iid2brand": ITEM_DISCRIMINATION,
    "iid2feature": ITEM_DISCRIMINATION,
    "iid2sim": ITEM_DISCRIMINATION,
    "description2iid": ITEM_REVERSE,
    "feature2iid": ITEM_REVERSE,
    "uid2hist": UID2HIST,
    "uid2summary": UID2SUMMARY,
    "explan": (EXPLANATION,),
}

#: the template lists printed in Figure B2 (what the "every template used" test checks)
FIGURE_B2: dict[str, tuple[str, ...]] = {
    "task1": UID2NEXT,
    "task2": UIDIID2RANK,
    "task3": UIDIID2BINARY,
    "task4": ITEM_DISCRIMINATION,
    "task6": UID2HIST,
}


def fields_of(template: str) -> set[str]:
    """Names of the ``{...}`` placeholders in `template`."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def render(template: str, **slots: str) -> str:
    """Fill `template`; ``{Field}`` is derived from ``field`` (first letter upper-cased)."""
    if "field" in slots:
        f = slots["field"]
        slots["Field"] = f[:1].upper() + f[1:]
    missing = fields_of(template) - set(slots)
    if missing:
        raise KeyError(f"template needs {sorted(missing)}: {template!r}")
    return template.format(**{k: v for k, v in slots.items() if k in fields_of(template)})


def template_regex(template: str) -> re.Pattern[str]:
    """A regex that matches exactly the questions `template` can render (for tests/audits)."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name:
            out.append(r"(.+?)")
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


class TemplatePicker:
    """Seeded template choice that deals every template before repeating one.

    A plain ``rng.choice`` per sample can leave a template unused on a small dataset;
    dealing from reshuffled decks keeps the choice random yet guarantees that all
    templates appear once there are at least as many samples as templates, and keeps
    their counts balanced (the paper uses all of Figure B2).
    """

    def __init__(self, n_templates: int, rng: random.Random) -> None:
        if n_templates < 1:
            raise ValueError("need at least one template")
        self.n = n_templates
        self.rng = rng
        self._deck: list[int] = []

    def pick(self) -> int:
        if not self._deck:
            self._deck = list(range(self.n))
            self.rng.shuffle(self._deck)
        return self._deck.pop()


def join_titles(titles: Sequence[str]) -> str:
    return SEP.join(titles)
