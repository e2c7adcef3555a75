"""Samples of every alignment task, and their rendering into the three data forms.

A *sample* is form-independent: the user, the item ids, the answer and the chosen
template. Rendering it in a *form* decides only how the history and the items are shown:

  behaviour  titles only                                   (paper 2.2)
  intention  ``<user>`` for the history, ``<item>`` per item (paper 2.3)
  hybrid     ``<user>`` + titles, ``<item>`` + title        (paper 2.4, the third form)

One sample rendered in several forms keeps its template, so the behaviour, intention and
hybrid versions of a question differ only in what the paper says they differ in.

Which forms each type has (and why):
  uid2next, uidiid2rank, uidiid2binary, iid2description/tags/brand/feature/sim: all three.
  iid2title: intention only -- in the behaviour and hybrid forms the title would be both
      question and answer.
  description2iid, feature2iid: behaviour only (text -> title; no embedding involved).
  uid2hist: intention only -- task 6 exists only where embeddings are present, and with
      the titles in the prompt (hybrid) the answer would be a copy of the question.
  uid2summary: intention and hybrid (task 6; the summary is not in the prompt).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from tqdm import tqdm

from core.registry import FORMS
from data_gen import templates as T
from data_gen.inputs import TopRow

_S = TypeVar("_S")


def derived_rng(seed: int, *names: object) -> random.Random:
    """An independent, reproducible generator per purpose (str seeds hash with SHA-512, not
    Python's salted hash, so they are stable across processes)."""
    return random.Random(":".join([str(seed), *map(str, names)]))


@dataclass
class Sample:
    type: str
    template: str
    answer: str
    uid: int = 0
    #: the item the answer names or the question asks about (0 = none)
    iid: int = 0
    #: bound to <user>: the recommender's own input (last recmodel.max_seq_len items)
    history: tuple[int, ...] = ()
    #: the titles shown in the prompt (last data_gen.max_hist_len of history)
    shown: tuple[int, ...] = ()
    #: items filling {item} / {items}, in prompt order (each one an <item> marker)
    items: tuple[int, ...] = ()
    label: str | None = None
    #: extra template slots ({field}, {value})
    slots: dict[str, str] = field(default_factory=dict)
    #: extra record keys (e.g. the recommender's score of an explanation item)
    extra: dict[str, Any] = field(default_factory=dict)


class Renderer:
    """Turns samples into records for one form."""

    def __init__(self, titles: Sequence[str]) -> None:
        self.titles = titles

    def history_text(self, ids: Sequence[int], form: str) -> str:
        text = T.join_titles([self.titles[i] for i in ids])
        if form == "behaviour":
            return text
        if form == "intention":
            return T.USER_TOKEN
        return f"{T.USER_TOKEN} {text}"

    def item_text(self, iid: int, form: str) -> str:
        if form == "behaviour":
            return self.titles[iid]
        if form == "intention":
            return T.ITEM_TOKEN
        return f"{T.ITEM_TOKEN} {self.titles[iid]}"

    def record(self, s: Sample, form: str, rid: str) -> dict:
        names = T.fields_of(s.template)
        slots = dict(s.slots)
        if "history" in names:
            slots["history"] = self.history_text(s.shown, form)
        if "items" in names:
            slots["items"] = T.join_titles([self.item_text(i, form) for i in s.items])
        if "item" in names:
            slots["item"] = self.item_text(s.items[0], form)
        uses_items = bool(names & {"item", "items"})
        rec: dict[str, Any] = {
            "id": rid,
            "type": s.type,
            "form": form,
            "uid": s.uid,
            "iid": s.iid,
            "history": list(s.history),
            "candidates": list(s.items) if s.type in ("uidiid2rank", "uidiid2binary", "explan") else [],
            "iids_in_question": list(s.items) if (uses_items and form != "behaviour") else [],
            "question": T.render(s.template, **slots),
            "answer": s.answer,
        }
        if s.label is not None:
            rec["label"] = s.label
        rec.update(s.extra)
        return rec


def cap(samples: list[_S], n: int, rng: random.Random) -> list[_S]:
    """At most `n` samples (0 = all), a seeded subset in the original order."""
    if n <= 0 or len(samples) <= n:
        return samples
    keep = sorted(rng.sample(range(len(samples)), n))
    return [samples[k] for k in keep]


# --------------------------------------------------------------------------- registered tasks


@dataclass(frozen=True)
class SplitContext:
    """What the generator of a registered task gets for one source split."""

    #: the recommender's export rows of the split (train: data_gen.train_cap_per_user per user)
    rows: list[TopRow]
    split: str
    titles: Sequence[str]
    seed: int
    #: titles shown in a prompt: the last max_hist_len of a row's history (0 = all)
    max_hist_len: int

    def shown(self, row: TopRow) -> tuple[int, ...]:
        return tuple(row.history[-self.max_hist_len:] if self.max_hist_len > 0 else row.history)

    def rng(self, record_type: str, purpose: str) -> random.Random:
        return derived_rng(self.seed, self.split, record_type, purpose)


#: generators of tasks added with core.registry.register_task: record type -> the samples
#: of one split (the built-in tasks below are generated together, as they share a pass over
#: the rows). data_gen.pipeline runs each on the train split and the evaluation splits and
#: caps it like the built-in ones (data_gen.max_train_per_task / max_eval_per_task).
SPLIT_GENERATORS: dict[str, Callable[[SplitContext], list[Sample]]] = {}


def registered_samples(ctx: SplitContext, per_task_cap: int) -> dict[str, list[Sample]]:
    """The samples of every registered task for one split, capped."""
    return {t: cap(gen(ctx), per_task_cap, ctx.rng(t, "cap")) for t, gen in SPLIT_GENERATORS.items()}


# --------------------------------------------------------------------------- tasks 1-3, 6


def user_samples(
    rows: list[TopRow], split: str, titles: Sequence[str], seed: int, max_hist_len: int,
    per_task_cap: int, binary_rows_per_user: int = 1,
) -> dict[str, list[Sample]]:
    """Tasks 1, 2, 3 and uid2hist for the rows of one split.

    Task 1: one sample per row, answer = the recommender's top-1 title. Task 2: one per
    row, the candidates shuffled into the prompt, answer = their titles in model order.
    Task 3: one positive and one negative per row of the user's `binary_rows_per_user` most
    recent rows (0 = every row; valid/test have one row per user), answer/label Yes/No.
    uid2hist: one per row, answer = the shown titles.
    """
    pick = {t: T.TemplatePicker(len(T.TEMPLATES[t]), derived_rng(seed, split, t, "template"))
            for t in ("uid2next", "uidiid2rank", "uidiid2binary", "uid2hist")}
    shuffle_rng = derived_rng(seed, split, "uidiid2rank", "shuffle")
    out: dict[str, list[Sample]] = {t: [] for t in pick}
    user_rows: dict[int, list[TopRow]] = {}
    for r in tqdm(rows, desc=f"tasks 1-3,6 ({split})", leave=False):
        shown = r.history[-max_hist_len:] if max_hist_len > 0 else r.history
        out["uid2next"].append(Sample(
            "uid2next", T.UID2NEXT[pick["uid2next"].pick()], titles[r.top[0]],
            uid=r.uid, iid=r.top[0], history=r.history, shown=shown))
        order = list(r.rank_candidates)
        shuffled = order[:]
        shuffle_rng.shuffle(shuffled)
        out["uidiid2rank"].append(Sample(
            "uidiid2rank", T.UIDIID2RANK[pick["uidiid2rank"].pick()], T.join_titles([titles[i] for i in order]),
            uid=r.uid, iid=order[0], history=r.history, shown=shown, items=tuple(shuffled)))
        out["uid2hist"].append(Sample(
            "uid2hist", T.UID2HIST[pick["uid2hist"].pick()], T.join_titles([titles[i] for i in shown]),
            uid=r.uid, history=r.history, shown=shown))
        user_rows.setdefault(r.uid, []).append(r)  # rows are sorted by (uid, position)
    for uid in sorted(user_rows):
        recent = user_rows[uid][-binary_rows_per_user:] if binary_rows_per_user > 0 else user_rows[uid]
        for r in recent:
            shown = r.history[-max_hist_len:] if max_hist_len > 0 else r.history
            for item, label, score in ((r.pos, "Yes", r.pos_score), (r.neg, "No", r.neg_score)):
                out["uidiid2binary"].append(Sample(
                    "uidiid2binary", T.UIDIID2BINARY[pick["uidiid2binary"].pick()], label,
                    uid=uid, iid=item, history=r.history, shown=shown, items=(item,), label=label,
                    extra={} if score is None else {"score": score}))
    for t in out:
        if t == "uidiid2binary" and per_task_cap > 0:
            # cap whole pairs, so that every kept row keeps its positive and its negative
            pairs = [out[t][k:k + 2] for k in range(0, len(out[t]), 2)]
            pairs = cap(pairs, per_task_cap // 2 or 1, derived_rng(seed, split, t, "cap"))
            out[t] = [s for p in pairs for s in p]
        else:
            out[t] = cap(out[t], per_task_cap, derived_rng(seed, split, t, "cap"))
    return out


def pointwise_records(rank: dict, titles: Sequence[str], max_hist_len: int, seed: int) -> list[dict]:
    """One task-3 question per candidate of a task-2 record, in that record's form.

    Why: a small LLM may know which candidate the recommender puts first (its Yes/No margin
    on task 3 orders them) long before it can write the whole ordered list of titles; scoring
    the candidates one by one (src.infer_alignment, ``eval.pointwise_rank``) measures the
    ranking apart from the listwise answer. The history shown is the one the task-2 prompt
    showed; every candidate of a record gets the same (seeded) template, so their margins
    differ only by the item.
    """
    rid = rank.get("id", "?")
    cands = [int(c) for c in rank.get("candidates") or []]
    if not cands:
        raise ValueError(f"task record {rid}: no 'candidates' to score one by one")
    form = rank.get("form")
    if form not in FORMS:
        raise ValueError(f"task record {rid}: 'form' must be one of {', '.join(FORMS)} (data_gen writes it), "
                         f"got {form!r}")
    history = tuple(int(i) for i in rank.get("history") or [])
    shown = history[-max_hist_len:] if max_hist_len > 0 else history
    template = T.UIDIID2BINARY[derived_rng(seed, rid, "pointwise").randrange(len(T.UIDIID2BINARY))]
    renderer = Renderer(titles)
    return [
        renderer.record(Sample("uidiid2binary", template, "", uid=int(rank.get("uid", 0)), iid=c, history=history,
                               shown=shown, items=(c,)), form, f"{rid}:{c}")
        for c in cands
    ]


def per_user_cap(rows: list[TopRow], n: int) -> list[TopRow]:
    """The `n` most recent rows of each user (0 = all); rows stay sorted by (uid, position)."""
    if n <= 0:
        return rows
    by_user: dict[int, list[TopRow]] = {}
    for r in rows:
        by_user.setdefault(r.uid, []).append(r)
    return [r for uid in sorted(by_user) for r in by_user[uid][-n:]]


def summary_samples(
    users: list[tuple[int, tuple[int, ...], tuple[int, ...]]], summaries: list[str | None], seed: int,
) -> list[Sample]:
    """uid2summary samples for (uid, history, shown) with a summary; users without one are skipped."""
    pick = T.TemplatePicker(len(T.UID2SUMMARY), derived_rng(seed, "train", "uid2summary", "template"))
    out = []
    for (uid, hist, shown), text in zip(users, summaries):
        if text is None or not text.strip():
            continue
        out.append(Sample("uid2summary", T.UID2SUMMARY[pick.pick()], text.strip(), uid=uid, history=hist, shown=shown))
    return out


# --------------------------------------------------------------------------- task 4


def _text(v: Any) -> str:
    """A metadata value as one string: lists joined with "; ", blanks dropped."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return T.join_titles([str(x).strip() for x in v if str(x).strip()])
    return str(v).strip()


def _description(v: Any) -> str:
    """Amazon descriptions are lists of paragraphs: take the first substantial one."""
    if isinstance(v, (list, tuple)):
        parts = [str(x).strip() for x in v if str(x).strip()]
        return next((p for p in parts if len(p) > 50), parts[0] if parts else "")
    return _text(v)


def _clip(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, cut at a word boundary (0 = no limit)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:")


def item_fields(item: dict, max_chars: int) -> dict[str, str]:
    """Task 4 attributes an item really has. ``tags`` falls back to MovieLens ``genres``
    (a movie's genres are its tags); absent or empty fields are left out, never invented."""
    out = {}
    desc = _clip(_description(item.get("description")), max_chars)
    if desc:
        out["description"] = desc
    tags = _text(item.get("tags")) or _text(item.get("genres"))
    if tags:
        out["tags"] = _clip(tags, max_chars)
    brand = _text(item.get("brand"))
    if brand:
        out["brand"] = _clip(brand, max_chars)
    feature = _clip(_text(item.get("feature")), max_chars)
    if feature:
        out["feature"] = feature
    return out


def item_samples(
    items: Sequence[dict], titles: Sequence[str], item_sim: dict[int, list[int]], seed: int, num_sim: int,
    max_chars: int, per_task_cap: int,
) -> dict[str, list[Sample]]:
    """Task 4 (train only): one sample per item and available attribute, plus the reverse
    description2iid / feature2iid, plus iid2sim from the recommender's similar items."""
    types = ["iid2title", "iid2description", "iid2tags", "iid2brand", "iid2feature", "iid2sim",
             "description2iid", "feature2iid"]
    pick = {t: T.TemplatePicker(len(T.TEMPLATES[t]), derived_rng(seed, "train", t, "template")) for t in types}
    out: dict[str, list[Sample]] = {t: [] for t in types}
    for iid in tqdm(range(1, len(titles)), desc="task 4", leave=False):
        title = titles[iid]
        out["iid2title"].append(Sample(
            "iid2title", T.ITEM_DISCRIMINATION[pick["iid2title"].pick()], title, iid=iid, items=(iid,),
            slots={"field": T.FIELD_NAMES["title"]}))
        fields = item_fields(items[iid - 1], max_chars)
        for name in ("description", "tags", "brand", "feature"):
            if name not in fields:
                continue
            t = f"iid2{name}"
            out[t].append(Sample(t, T.ITEM_DISCRIMINATION[pick[t].pick()], fields[name], iid=iid, items=(iid,),
                                 slots={"field": T.FIELD_NAMES[name]}))
            if name in ("description", "feature"):
                rt = f"{name}2iid"
                out[rt].append(Sample(rt, T.ITEM_REVERSE[pick[rt].pick()], title, iid=iid,
                                      slots={"field": T.FIELD_NAMES[name], "value": fields[name]}))
        sims = item_sim.get(iid, [])[:num_sim]
        if sims:
            word = T.FIELD_NAMES["sim"] + ("s" if len(sims) > 1 else "")
            out["iid2sim"].append(Sample(
                "iid2sim", T.ITEM_DISCRIMINATION[pick["iid2sim"].pick()], T.join_titles([titles[i] for i in sims]),
                iid=iid, items=(iid,), slots={"field": word}))
    return {t: cap(v, per_task_cap, derived_rng(seed, "train", t, "cap")) for t, v in out.items()}


def iid2title_eval_samples(titles: Sequence[str], n: int, split: str, seed: int) -> list[Sample]:
    """A seeded sample of `n` items (0 = all) for an exact-match iid2title evaluation."""
    ids = list(range(1, len(titles)))
    if 0 < n < len(ids):
        ids = sorted(derived_rng(seed, split, "iid2title", "items").sample(ids, n))
    pick = T.TemplatePicker(len(T.ITEM_DISCRIMINATION), derived_rng(seed, split, "iid2title", "template"))
    return [Sample("iid2title", T.ITEM_DISCRIMINATION[pick.pick()], titles[i], iid=i, items=(i,),
                   slots={"field": T.FIELD_NAMES["title"]}) for i in ids]


# --------------------------------------------------------------------------- explanations


def explan_samples(
    rows: list[TopRow], n: int, split: str, titles: Sequence[str], seed: int, max_hist_len: int,
) -> list[tuple[str, Sample]]:
    """(id, sample) pairs: one positive and one negative item for each of `n` sampled rows.

    Valid/test rows are one per user, so `n` users are sampled; train rows hold several
    positions per user, so a user may appear with more than one position (the paper's
    2,000 train prompts exceed some datasets' user counts). The id is shared by every
    form's file and the ChatGPT CSV, so explanations of different methods join on it.
    """
    idx = list(range(len(rows)))
    if 0 < n < len(idx):
        idx = sorted(derived_rng(seed, split, "explan", "rows").sample(idx, n))
    out = []
    for k, j in enumerate(idx):
        r = rows[j]
        shown = r.history[-max_hist_len:] if max_hist_len > 0 else r.history
        for item, label, score, tag in ((r.pos, "Yes", r.pos_score, "pos"), (r.neg, "No", r.neg_score, "neg")):
            s = Sample("explan", T.EXPLANATION, label, uid=r.uid, iid=item, history=r.history, shown=shown,
                       items=(item,), label=label, extra={} if score is None else {"score": score})
            out.append((f"explan-{split}-{k:05d}-{tag}", s))
    return out
