"""Case studies on demand (paper 3.5, Figures 5-6): one user and one item, every model side by side.

    bash shell/explain.sh [configs/X.yaml] --user UID [--item IID|"title"] [--aspect "..."]
                          [--methods none,behaviour,intention,both] [--json] [--history "t1; t2; ..."]
    python -m src.case_study --config configs/X.yaml --user 21 --item "Heat (1995)"

What it prints, in order:

1. The recommender's view (the frozen SASRec of ``recmodel/model.pt``, through
   :mod:`recmodel.encoder`): the item's raw score and its rank among the items the user
   has not seen (history masked exactly as :mod:`recmodel.infer` masks it), the side of the
   task-3 cuts it falls on (``Yes`` in the top ``recmodel.pos_cut``, ``No`` in the bottom
   ``recmodel.neg_cut``, as the explanation prompts' labels are drawn), and the user's top 5.
2. Per method (``none`` = the unaligned base LLM, ``behaviour`` / ``intention`` / ``both`` =
   RecExplainer-B / -I / -H loaded with :func:`src.model.load_trained`, each once): the Yes/No
   decision of the task-3 prompt (Figure B2's first ``uidiid2binary`` template) with its
   probability, the softmax over the "Yes" and "No" answer tokens
   (:func:`src.generation.score_yes_no`), and the explanation of the section 3.1.2
   instruction (:func:`src.generation.generate_texts`, greedy, ``explain.max_new_tokens`` /
   ``explain.min_new_tokens``, exactly as :mod:`src.infer_explan`), streamed token by token
   (transformers ``TextStreamer``) when stdout is a terminal.

Prompts are rendered by data_gen's own :class:`data_gen.generate.Renderer` in the form each
method was trained on (``core.registry.EXPLAN_FILES``: none/behaviour = titles,
intention = ``<user>``/``<item>``, both = marker followed by titles), with the history bound
to ``<user>`` being the last ``recmodel.max_seq_len`` items and the titles shown the last
``data_gen.max_hist_len``, so a (user, item) of ``explain/<method>_valid.jsonl`` gets
byte-identical prompts. ``--aspect`` appends ``explain.aspect_template`` (controllable
explanations, paper 3.5.2) as ``src.infer_explan --aspect`` does.

Whose history: ``--user UID`` takes the user's sequence before the position named by
``--position`` (default ``data_gen.eval_split``, the position the explanation prompts use:
``test`` = all but the last item, ``valid`` = all but the last two, ``full`` = everything);
``--history "t1; t2"`` is a user typed in by hand (titles or ids, oldest first). Without
``--item`` the recommender's top-1 is explained.

``--json`` prints one JSON object instead (nothing streamed)::

    {
      "dataset": str, "config": str, "aspect": str | null,
      "user": {"uid": int | null,            # null for --history
               "source": "user" | "history", "position": "test" | "valid" | "full" | null,
               "history": [iid, ...],         # whole history (what the recommender masks)
               "history_titles": [str, ...]}, # the titles the prompts show
      "item": {"iid": int, "title": str, "chosen_by": "argument" | "recommender top-1"},
      "recommender": {"model": str, "score": float,
                      "rank": int | null,      # 1 = best; null when the item is in the history
                      "n_ranked": int,         # items ranked (non-history)
                      "in_history": bool,
                      "label": "Yes" | "No" | null,   # task-3 side of the cuts; null in between
                      "top": [{"iid": int, "title": str, "score": float}, ...]},   # 5 best
      "methods": [{"method": "none" | "behaviour" | "intention" | "both",
                   "name": str,               # display name of Tables 2/3
                   "decision": "Yes" | "No", "p_yes": float, "p_decision": float,
                   "logp_yes": float, "logp_no": float,
                   "agrees_with_recommender": bool | null,   # null when label is null
                   "binary_question": str, "question": str, "explanation": str}, ...]
    }

Bad input stops with one ``error: ...`` line and exit status 2 (core.utils.run_stage): an
unknown user id or item id, a title that matches no item (the closest titles are
suggested), a method whose model is not trained yet (the command that trains it is named).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from core.config import Config, add_config_args, config_from_args
from core.registry import CASE_STUDY_METHODS, EXPLAN_FILES, method_display
from core.utils import StageError, resolve_device, run_stage, set_seed, setup_logging

log = logging.getLogger("src.case_study")

#: methods in the order they are shown (unaligned first, as Table 2)
METHODS = CASE_STUDY_METHODS
POSITIONS = ("test", "valid", "full")
TOP_K = 5
#: Figure B2's first task-3 template: the same sentence the explanation instruction starts with
BINARY_TEMPLATE_INDEX = 0


# --------------------------------------------------------------------------- inputs


def parse_methods(text: str) -> list[str]:
    """``"none,both"`` -> ["none", "both"] (order kept, duplicates dropped)."""
    out: list[str] = []
    for m in (p.strip() for p in text.split(",")):
        if not m:
            continue
        if m not in METHODS:
            raise StageError(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
        if m not in out:
            out.append(m)
    if not out:
        raise StageError(f"--methods: no method given (choose from {', '.join(METHODS)})")
    return out


def _norm(title: str) -> str:
    return " ".join(title.lower().split())


def resolve_item(query: str | int, titles: Sequence[str], what: str = "--item") -> int:
    """An item id from an id ("42") or a title (exact, case-insensitive; else a unique substring).

    `titles[iid]` is item iid's title (index 0 = padding). A title that matches nothing is
    an error that suggests the closest titles (difflib); an ambiguous one lists its matches.
    """
    n_items = len(titles) - 1
    text = str(query).strip()
    if re.fullmatch(r"\d+", text):
        iid = int(text)
        if not 1 <= iid <= n_items:
            raise StageError(f"{what}: unknown item id {iid} (item ids are 1..{n_items})")
        return iid
    if not text:
        raise StageError(f"{what}: empty item title")
    want = _norm(text)
    exact = [i for i in range(1, n_items + 1) if _norm(titles[i]) == want]
    if exact:
        if len(exact) > 1:
            log.warning("%s: %d items are titled %r; taking item %d", what, len(exact), text, exact[0])
        return exact[0]
    partial = [i for i in range(1, n_items + 1) if want in _norm(titles[i])]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        shown = "; ".join(f'"{titles[i]}" ({i})' for i in partial[:5])
        more = f" and {len(partial) - 5} more" if len(partial) > 5 else ""
        raise StageError(f'{what}: title "{text}" is ambiguous, it is part of {shown}{more}; '
                         "give the full title or the item id")
    lowered = {}
    for i in range(1, n_items + 1):
        lowered.setdefault(_norm(titles[i]), i)
    close = difflib.get_close_matches(want, list(lowered), n=3, cutoff=0.4)
    hint = ("; closest titles: " + ", ".join(f'"{titles[lowered[c]]}" ({lowered[c]})' for c in close)) if close else ""
    raise StageError(f'{what}: unknown title "{text}"{hint}')


@dataclass
class UserView:
    uid: int | None
    #: whole history (oldest first): what the recommender masks
    history: list[int]
    source: str
    position: str | None


def user_from_id(data: Any, uid: int, position: str) -> UserView:
    if uid not in data.sequences:
        ids = sorted(data.sequences)
        raise StageError(f"--user: unknown user id {uid} ({len(ids)} users, ids {ids[0]}..{ids[-1]})")
    seq = data.sequences[uid]
    hist = {"test": seq[:-1], "valid": seq[:-2], "full": seq}[position]
    if not hist:
        raise StageError(f"--user: user {uid} has no history before the {position} position ({len(seq)} items)")
    return UserView(uid, list(hist), "user", position)


def user_from_titles(text: str, titles: Sequence[str]) -> UserView:
    parts = [p.strip() for p in text.split(";")]
    parts = [p for p in parts if p]
    if not parts:
        raise StageError('--history: no titles given (write them oldest first, separated by "; ")')
    return UserView(None, [resolve_item(p, titles, what="--history") for p in parts], "history", None)


# --------------------------------------------------------------------------- recommender


@dataclass
class RecView:
    model: str
    iid: int
    score: float
    rank: int | None
    n_ranked: int
    in_history: bool
    label: str | None
    top: list[dict[str, Any]] = field(default_factory=list)


def recommender_view(encoder: Any, history: list[int], iid: int | None, titles: Sequence[str], cfg: Config,
                     k: int = TOP_K) -> RecView:
    """Score, rank (history masked as recmodel.infer does) and top-k of one user.

    `iid` None: the recommender's top-1 item."""
    import torch

    from recmodel.encoder import masked_scores

    raw, masked = masked_scores(encoder, [history])
    raw, masked = raw[0].float().cpu(), masked[0].float().cpu()
    sorted_s, sorted_i = masked.sort(descending=True, stable=True)
    n = int(torch.isfinite(masked).sum())
    if iid is None:
        if n == 0:
            raise StageError("the recommender has no item left to recommend (every item is in the history)")
        iid = int(sorted_i[0])
    in_hist = not bool(torch.isfinite(masked[iid]))
    rank = None if in_hist else int((sorted_i == iid).nonzero()[0, 0]) + 1
    label = None
    if rank is not None:
        n_pos = max(1, math.floor(n * cfg.recmodel.pos_cut))
        n_neg = max(1, math.floor(n * cfg.recmodel.neg_cut))
        label = "Yes" if rank <= n_pos else "No" if rank > n - n_neg else None
    top = [{"iid": int(i), "title": titles[int(i)], "score": float(s)}
           for i, s in zip(sorted_i[:min(k, n)].tolist(), sorted_s[:min(k, n)].tolist())]
    name = str(getattr(encoder, "info", {}).get("arch", {}).get("model", "recommender"))
    return RecView(name, iid, float(raw[iid]), rank, n, in_hist, label, top)


# --------------------------------------------------------------------------- prompts


def build_records(cfg: Config, titles: Sequence[str], user: UserView, iid: int, method: str,
                  aspect: str = "") -> tuple[dict, dict]:
    """(yes/no record, explanation record) for one method, rendered by data_gen's Renderer."""
    from data_gen import templates as T
    from data_gen.generate import Renderer, Sample
    from src.chat import add_aspect

    form = EXPLAN_FILES[method]
    hist = tuple(user.history[-cfg.recmodel.max_seq_len:])
    mh = cfg.data_gen.max_hist_len
    shown = hist[-mh:] if mh > 0 else hist
    uid = user.uid or 0
    renderer = Renderer(titles)
    binary = renderer.record(
        Sample("uidiid2binary", T.UIDIID2BINARY[BINARY_TEMPLATE_INDEX], "", uid=uid, iid=iid, history=hist,
               shown=shown, items=(iid,)), form, f"case-{method}-binary")
    explan = renderer.record(
        Sample("explan", T.EXPLANATION, "", uid=uid, iid=iid, history=hist, shown=shown, items=(iid,)),
        form, f"case-{method}-explan")
    if aspect:
        explan["question"] = add_aspect(explan["question"], aspect, cfg)
    return binary, explan


def shown_titles(cfg: Config, titles: Sequence[str], user: UserView) -> list[str]:
    hist = user.history[-cfg.recmodel.max_seq_len:]
    mh = cfg.data_gen.max_hist_len
    return [titles[i] for i in (hist[-mh:] if mh > 0 else hist)]


# --------------------------------------------------------------------------- models


def train_command(cfg: Config, method: str, overrides: Sequence[str] = ()) -> str:
    from core.config import config_arg

    extra = "".join(f" --set {o}" for o in overrides)
    return f"bash shell/train.sh {config_arg(cfg)} --task_type {method}{extra}"


def check_trained(cfg: Config, methods: Sequence[str], overrides: Sequence[str] = ()) -> None:
    """Every aligned method asked for has a finished training run, else one clear error."""
    from src.model import META_FILE

    for m in methods:
        if m == "none":
            continue
        meta = cfg.llm_dir / m / META_FILE
        done = False
        if meta.is_file():
            try:
                done = bool(json.loads(meta.read_text(encoding="utf-8")).get("done"))
            except json.JSONDecodeError:
                done = False
        if not done:
            raise StageError(f"method {m} ({method_display(cfg, m)}) is not trained yet (no finished run in "
                             f"{cfg.llm_dir / m}); train it with: {train_command(cfg, m, overrides)}")


def yes_no(model: Any, tokenizer: Any, record: dict, cfg: Config) -> dict[str, Any]:
    """Decision and probability: softmax over the "Yes"/"No" answer tokens' log-probabilities."""
    from src.generation import score_yes_no

    out = score_yes_no(model, tokenizer, [record], cfg, batch_size=1, desc="yes/no")[0]
    ly, ln = out["logp_yes"], out["logp_no"]
    p_yes = 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, ln - ly))))
    return {"decision": out["pred"], "p_yes": p_yes, "p_decision": p_yes if out["pred"] == "Yes" else 1.0 - p_yes,
            "logp_yes": ly, "logp_no": ln}


def explain(model: Any, tokenizer: Any, record: dict, cfg: Config, stream: bool = False) -> str:
    """The explanation, generated exactly as src.infer_explan does; printed as it grows if `stream`."""
    from src.generation import explanation_kwargs, generate_texts

    kwargs: dict[str, Any] = explanation_kwargs(cfg)
    if stream:
        from transformers import TextStreamer

        kwargs["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    texts = generate_texts(model, tokenizer, [record], cfg, max_new_tokens=cfg.explain.max_new_tokens, num_beams=1,
                           num_return_sequences=1, batch_size=1, desc="explain", **kwargs)
    return texts[0][0] if texts and texts[0] else ""


# --------------------------------------------------------------------------- run


def _short(cfg: Config, path: Any) -> str:
    """`path` relative to the repository when inside it (what a user types)."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(cfg.resolve(".").resolve()))
    except ValueError:
        return str(path)


class _Printer:
    """Text output (nothing when --json)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str = "", end: str = "\n") -> None:
        if self.on:
            sys.stdout.write(text + end)
            sys.stdout.flush()


def run(
    cfg: Config, uid: int | None = None, item: str | None = None, history: str | None = None,
    aspect: str = "", methods: Sequence[str] = METHODS, as_json: bool = False, stream: bool | None = None,
    position: str | None = None, overrides: Sequence[str] = (), loaded: dict[str, tuple[Any, Any]] | None = None,
    rec_encoder: Any = None,
) -> dict[str, Any]:
    """One case study; prints it (text or JSON) and returns the JSON object.

    `loaded` maps a method to an already-loaded (model, tokenizer) and `rec_encoder`
    replaces the recommender loaded from recmodel/model.pt (tests, notebooks).
    """
    from preprocess.dataset import load_canonical

    if (uid is None) == (history is None):
        raise StageError("give exactly one of --user UID or --history \"title; title; ...\"")
    position = position or cfg.data_gen.eval_split
    if position not in POSITIONS:
        raise StageError(f"--position must be one of {', '.join(POSITIONS)}, got {position!r}")
    methods = list(methods)
    for m in methods:
        if m not in METHODS:
            raise StageError(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    aspect = (aspect or "").strip()
    set_seed(cfg.seed)
    data = load_canonical(cfg)
    titles = data.titles
    user = user_from_id(data, uid, position) if uid is not None else user_from_titles(history or "", titles)
    iid = resolve_item(item, titles) if item is not None else None
    check_trained(cfg, [m for m in methods if not (loaded and m in loaded)], overrides)

    device = resolve_device("auto")
    if rec_encoder is None:
        from recmodel.encoder import load_rec_encoder

        rec_encoder = load_rec_encoder(cfg, device=device)
    n_rec = int(getattr(rec_encoder, "n_items", len(titles) - 1))
    if n_rec != len(titles) - 1:
        raise StageError(f"{cfg.recmodel_dir / 'model.pt'} knows {n_rec} items but {cfg.data_dir} has "
                         f"{len(titles) - 1}; retrain the recommender after preprocess")
    chosen = "argument" if iid is not None else "recommender top-1"
    rec = recommender_view(rec_encoder, user.history, iid, titles, cfg)
    iid = rec.iid

    stream = sys.stdout.isatty() if stream is None else stream
    stream = stream and not as_json
    out = _Printer(not as_json)
    shown = shown_titles(cfg, titles, user)
    who = f"user {user.uid}" if user.uid is not None else "a user typed in by hand"
    where = f", history before the {user.position} item" if user.position and user.position != "full" else ""
    out(f"Case study: {who} ({len(user.history)} items{where}) and item {iid} \"{titles[iid]}\""
        f"{' (the recommender top-1)' if chosen != 'argument' else ''}")
    out(f"History shown to the LLM (oldest first): {'; '.join(shown)}")
    if aspect:
        out(f"Aspect: {aspect}")
    out("")
    out(f"Recommender ({rec.model}, {_short(cfg, cfg.recmodel_dir / 'model.pt')}):")
    if rec.in_history:
        out(f"  score {rec.score:.4f}; the item is in the user's history, so the recommender never ranks it")
    else:
        side = {"Yes": f"Yes (top {cfg.recmodel.pos_cut:.0%})", "No": f"No (bottom {cfg.recmodel.neg_cut:.0%})",
                None: "between the Yes/No cuts"}[rec.label]
        out(f"  score {rec.score:.4f}, rank {rec.rank} of {rec.n_ranked} unseen items -> {side}")
    out("  top 5: " + "; ".join(f"{k}. {t['title']} ({t['iid']}, {t['score']:.3f})" for k, t in enumerate(rec.top, 1)))

    result: dict[str, Any] = {
        "dataset": cfg.dataset.name, "config": cfg.source_file, "aspect": aspect or None,
        "user": {"uid": user.uid, "source": user.source, "position": user.position, "history": user.history,
                 "history_titles": shown},
        "item": {"iid": iid, "title": titles[iid], "chosen_by": chosen},
        "recommender": {"model": rec.model, "score": rec.score, "rank": rec.rank, "n_ranked": rec.n_ranked,
                        "in_history": rec.in_history, "label": rec.label, "top": rec.top},
        "methods": [],
    }
    from src.model import load_trained

    for m in methods:
        name = method_display(cfg, m)
        if loaded and m in loaded:
            model, tok = loaded[m]
        else:
            log.info("loading %s (%s)", m, name)
            model, tok = load_trained(cfg, m, device=device, rec_encoder=rec_encoder)
        binary, explan_rec = build_records(cfg, titles, user, iid, m, aspect)
        yn = yes_no(model, tok, binary, cfg)
        agrees = None if rec.label is None else yn["decision"] == rec.label
        out("")
        mark = "" if agrees is None else "  (agrees with the recommender)" if agrees else "  (disagrees with the recommender)"
        out(f"[{name}]  decision: {yn['decision']}  p={yn['p_decision']:.3f}{mark}")
        out("  explanation: ", end="")
        text = explain(model, tok, explan_rec, cfg, stream=stream)
        if not stream:
            out(text)
        result["methods"].append({"method": m, "name": name, **yn, "agrees_with_recommender": agrees,
                                  "binary_question": binary["question"], "question": explan_rec["question"],
                                  "explanation": text})
        if not (loaded and m in loaded):
            del model  # one model in memory at a time
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
        sys.stdout.flush()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring (python -m pydoc src.case_study) for the --json schema.")
    add_config_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="user id of the dataset")
    who.add_argument("--history", help='a user not in the data: "title; title; ..." (or item ids), oldest first')
    p.add_argument("--item", help="item id or title (default: the recommender's top-1 for the user)")
    p.add_argument("--aspect", default="", help='controllable explanation (paper 3.5.2), e.g. "genres"')
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of %(default)s")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema in the module docstring)")
    p.add_argument("--position", choices=POSITIONS, default=None,
                   help="with --user: the history before the test item, the valid item, or the whole sequence "
                        "(default: data_gen.eval_split, the explanation prompts' position)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print explanations token by token (default: when stdout is a terminal)")
    p.add_argument("--verbose", action="store_true", help="log progress (model loading, ...) to stderr")
    return p


def _quiet(verbose: bool) -> Any:
    """One prompt at a time: progress bars and library notices would only break the output.

    Returns a function that restores the log levels (main may run inside tests)."""
    setup_logging()
    if verbose:
        return lambda: None
    if "tqdm" not in sys.modules:  # tqdm reads TQDM_* once, when it is imported
        os.environ.setdefault("TQDM_DISABLE", "1")
    import transformers

    root = logging.getLogger()
    before = transformers.logging.get_verbosity(), root.level
    transformers.logging.set_verbosity_error()
    root.setLevel(logging.WARNING)

    def restore() -> None:
        transformers.logging.set_verbosity(before[0])
        root.setLevel(before[1])

    return restore


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    restore = _quiet(args.verbose)

    def body() -> None:
        cfg = config_from_args(args)
        run(cfg, uid=args.user, item=args.item, history=args.history, aspect=args.aspect,
            methods=parse_methods(args.methods), as_json=args.json, stream=args.stream, position=args.position,
            overrides=args.overrides)

    try:
        return run_stage(body)
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
