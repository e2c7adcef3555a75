"""The one registry of methods and tasks: what every stage needs to know about them.

Stages meet through files and through this module, never by importing each other: the
names here are the on-disk names (``eval/<method>/``, ``explain/<method>_<split>.jsonl``,
``tasks/<form file>_<split>.json``), the ``--task_type`` values of the LLM stages, the table
rows and labels, the inference modes and the metric keys each one reports.

Adding an alignment task: :func:`register_task` (record type, forms, Table B2 row, and the
:class:`InferenceTask` when it is evaluated), its templates, generator and metric formula
where those concepts live (see :func:`register_task`). Adding a method: a :class:`Method`
in :data:`METHODS` and its place in the table orders below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.config import Config, ConfigError

# --------------------------------------------------------------------------- prompt markers

#: where the projected user embedding goes (bound to the record's ``history``)
USER_TOKEN = "<user>"
#: where a projected item embedding goes (bound, in order, to ``iids_in_question``)
ITEM_TOKEN = "<item>"
MARKER_TOKENS = (USER_TOKEN, ITEM_TOKEN)

# --------------------------------------------------------------------------- record types and forms

#: prompt forms of the alignment data (paper 3.2): ids only, embeddings only, both
FORMS = ("behaviour", "intention", "hybrid")
FORM_CODE = {"behaviour": "b", "intention": "i", "hybrid": "h"}

#: forms each record type is rendered in (see data_gen.generate)
TYPE_FORMS: dict[str, tuple[str, ...]] = {
    "uid2next": FORMS,
    "uidiid2rank": FORMS,
    "uidiid2binary": FORMS,
    "iid2title": ("intention",),
    "iid2description": FORMS,
    "iid2tags": FORMS,
    "iid2brand": FORMS,
    "iid2feature": FORMS,
    "iid2sim": FORMS,
    "description2iid": ("behaviour",),
    "feature2iid": ("behaviour",),
    "uid2hist": ("intention",),
    "uid2summary": ("intention", "hybrid"),
    "explan": FORMS,
}

#: Table B2 rows
TASK_OF_TYPE: dict[str, str] = {
    "uid2next": "Task 1", "uidiid2rank": "Task 2", "uidiid2binary": "Task 3",
    "iid2title": "Task 4", "iid2description": "Task 4", "iid2tags": "Task 4", "iid2brand": "Task 4",
    "iid2feature": "Task 4", "iid2sim": "Task 4", "description2iid": "Task 4", "feature2iid": "Task 4",
    "sharegpt": "Task 5", "uid2hist": "Task 6", "uid2summary": "Task 6",
}

# --------------------------------------------------------------------------- inference modes (Table 1)


@dataclass(frozen=True)
class InferenceTask:
    mode: str  # --inference_mode; also the record type it reads
    metrics: tuple[str, ...]  # metric keys of <mode>.metrics.json (formulas: core.metrics)
    list_answer: bool = False  # answers are lists of titles (eval.max_new_tokens_list)
    probe: bool = False  # measured during training (train.probe_samples, the learning curve)


INFERENCE_TASKS: dict[str, InferenceTask] = {
    t.mode: t for t in (
        InferenceTask("uid2next", ("hr@5", "ndcg@5"), probe=True),
        InferenceTask("uidiid2rank", ("ndcg@5",), list_answer=True, probe=True),
        InferenceTask("uidiid2binary", ("acc",), probe=True),
        InferenceTask("uid2hist", ("hcr",), list_answer=True),
        InferenceTask("iid2title", ("acc",)),
    )
}
#: inference modes and the metric keys each one reports
MODE_METRICS: dict[str, tuple[str, ...]] = {m: t.metrics for m, t in INFERENCE_TASKS.items()}
#: lists, not tuples, so that :func:`register_task` extends them in place for every importer
MODES: list[str] = list(INFERENCE_TASKS)
LIST_MODES: list[str] = [m for m, t in INFERENCE_TASKS.items() if t.list_answer]
#: probe order during training (binary before rank: the cheaper one first)
PROBE_MODES = ("uid2next", "uidiid2binary", "uidiid2rank")
assert set(PROBE_MODES) == {m for m, t in INFERENCE_TASKS.items() if t.probe}
#: modes with a constrained decoding (eval.constrained_modes; src.infer_alignment.constraint_for):
#: uid2next to catalogue titles, uidiid2rank to orders of the record's own candidates
CONSTRAINABLE_MODES = ("uid2next", "uidiid2rank")


def register_task(record_type: str, forms: tuple[str, ...], task: str, inference: InferenceTask | None = None) -> None:
    """Add an alignment task to the registry: its record type, the forms it is rendered in,
    its Table B2 row and, when it is evaluated, its inference mode (named like the type).

    The rest of a new task lives where its concept does: the generator in
    ``data_gen.generate.SPLIT_GENERATORS`` (samples from the recommender's export rows of a
    split), the templates in ``data_gen.templates.TEMPLATES`` and the metric formula in
    ``core.metrics.SCORERS``. Training (``train.task_mix``), evaluation
    (``src.infer_alignment --inference_mode``) and the tables follow from these entries;
    ``tests/src/test_add_task.py`` adds a toy task this way and runs it from data_gen to
    its metrics.
    """
    bad = [f for f in forms if f not in FORMS]
    if not forms or bad:
        raise ConfigError(f"register_task({record_type!r}): forms must be some of {FORMS}, got {forms}")
    if record_type in TYPE_FORMS:
        raise ConfigError(f"register_task: record type {record_type!r} exists already")
    TYPE_FORMS[record_type] = tuple(forms)
    TASK_OF_TYPE[record_type] = task
    if inference is not None:
        if inference.mode != record_type:
            raise ConfigError(f"register_task: an inference mode reads its own record type; got mode "
                              f"{inference.mode!r} for type {record_type!r}")
        INFERENCE_TASKS[inference.mode] = inference
        MODE_METRICS[inference.mode] = inference.metrics
        MODES.append(inference.mode)
        if inference.list_answer:
            LIST_MODES.append(inference.mode)


@dataclass(frozen=True)
class Column:
    header: str
    mode: str
    metric: str


#: Table 1 columns in the paper's order
TABLE1_COLUMNS: tuple[Column, ...] = (
    Column("Task1 H@5", "uid2next", "hr@5"),
    Column("Task1 N@5", "uid2next", "ndcg@5"),
    Column("Task2 N@5", "uidiid2rank", "ndcg@5"),
    Column("Task3 ACC", "uidiid2binary", "acc"),
    Column("Task6 HCR", "uid2hist", "hcr"),
)

# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    name: str  # name on disk (eval/<name>/, explain/<name>_<split>.jsonl, llm/<name>/)
    kind: str  # "baseline" (recmodel.baselines) | "llm" (a local LLM) | "api" (an OpenAI-compatible endpoint)
    task_type: str = ""  # --task_type of src.infer_alignment / src.infer_explan
    icl: bool = False  # two training examples in the prompt
    trained: bool = False  # src.train fine-tunes it (tasks/<name>_*.json)
    embeddings: bool = False  # its prompts carry the recommender's embeddings
    explan_form: str = ""  # form of its explanation prompts (tasks/explan_<name>_*.json)
    label: str = ""  # Table 1 row label; "{base}" = the base model's name
    display: str = ""  # Table 2/3 and Figure 4 label

    @property
    def api(self) -> bool:
        return self.kind == "api"


METHODS: dict[str, Method] = {
    m.name: m for m in (
        Method("random", "baseline", label="Random"),
        Method("popularity", "baseline", label="Popularity"),
        Method("kd_sasrec", "baseline", label="KD-SASRec"),
        Method("none", "llm", "none", explan_form="behaviour", label="{base}"),
        Method("none_icl", "llm", "none", icl=True, label="{base}-ICL"),
        Method("gpt4_icl", "api", "gpt4", icl=True, label="GPT4-ICL"),
        Method("chatgpt", "api", "chatgpt"),
        Method("behaviour", "llm", "behaviour", trained=True, explan_form="behaviour",
               label="RecExplainer-B", display="RecExplainer-B"),
        Method("intention", "llm", "intention", trained=True, embeddings=True, explan_form="intention",
               label="RecExplainer-I", display="RecExplainer-I"),
        Method("both", "llm", "both", trained=True, embeddings=True, explan_form="hybrid",
               label="RecExplainer-H", display="RecExplainer-H"),
    )
}

#: Table 1 rows in the paper's order
TABLE1_METHODS: tuple[Method, ...] = tuple(METHODS[m] for m in (
    "random", "popularity", "none", "none_icl", "gpt4_icl", "kd_sasrec", "behaviour", "intention", "both"))
#: Table 2's row order: unaligned LLM, API model, RecExplainer-B/I/H
EXPLAIN_METHODS = ("none", "chatgpt", "behaviour", "intention", "both")
#: explanation methods that are not aligned to the recommender / that are
UNALIGNED = tuple(m for m in EXPLAIN_METHODS if not METHODS[m].trained)
ALIGNED = tuple(m for m in EXPLAIN_METHODS if METHODS[m].trained)
#: Table 1 baselines scored by recmodel.baselines
BASELINES = tuple(m for m, d in METHODS.items() if d.kind == "baseline")
#: task types src.train fine-tunes (the alignment data files tasks/<type>_*.json)
TRAIN_TYPES = tuple(m for m, d in METHODS.items() if d.trained)
#: task types a local model is loaded for (none = the base model, untrained)
LOADABLE_TASK_TYPES = TRAIN_TYPES + ("none",)
#: --task_type of src.infer_alignment
ALIGN_TASK_TYPES = TRAIN_TYPES + ("none", "gpt4")
#: --task_type of src.infer_explan (local models, then the API model)
EXPLAIN_TASK_TYPES = TRAIN_TYPES + ("none", "chatgpt")
#: methods a local model explains (the form of their explanation prompts: explan_form)
EXPLAN_FILES = {m: d.explan_form for m, d in METHODS.items() if d.explan_form and d.trained}
EXPLAN_FILES["none"] = METHODS["none"].explan_form
#: methods whose prompts carry recommender embeddings; only they can do task 6 (uid2hist)
EMBEDDING_METHODS = frozenset(m for m, d in METHODS.items() if d.embeddings)
#: methods that need an OpenAI-compatible endpoint
API_METHODS = frozenset(m for m, d in METHODS.items() if d.api)
#: methods shown by the case study (local models, unaligned first)
CASE_STUDY_METHODS = ("none",) + TRAIN_TYPES


def not_applicable(method: str, mode: str) -> bool:
    """Whether the paper's Table 1 marks (method, task) N/A (a file with a value wins)."""
    if mode == "uid2hist":
        return method not in EMBEDDING_METHODS
    if mode == "uidiid2binary":
        return method == "popularity"  # no per-user score to threshold
    return False


# --------------------------------------------------------------------------- labels


def base_model_name(cfg: Config) -> str:
    """Row label of the unaligned LLM: the last path part of llm.base_model."""
    name = Path(cfg.llm.base_model.rstrip("/")).name or cfg.llm.base_model
    return "tiny-llama" if name == "tiny" else name


def method_label(method: str, cfg: Config) -> str:
    """The method's row label in Table 1 and the learning curve."""
    m = METHODS.get(method)
    return m.label.format(base=base_model_name(cfg)) if m and m.label else method


def method_display(cfg: Config, method: str) -> str:
    """The method's name in Tables 2/3 and Figure 4 (paper names where they apply)."""
    if method == "none":
        base = Path(cfg.llm.base_model.rstrip("/")).name or cfg.llm.base_model
        return f"{base} (unaligned)"
    if method == "chatgpt":
        model = cfg.explain.chatgpt_model or cfg.api.model
        return f"ChatGPT-style API ({model})" if model else "ChatGPT-style API"
    m = METHODS.get(method)
    return m.display if m and m.display else method


# --------------------------------------------------------------------------- file names


def task_file(cfg: Config, task_type: str, split: str) -> Path:
    """Task file a method is evaluated on: unaligned baselines read the text-only tasks."""
    src = "behaviour" if task_type in ("none", "gpt4") else task_type
    return cfg.tasks_dir / f"{src}_{split}.json"


#: a trained model's fingerprint (core.stamps) in llm/<task_type>/: what it was made from
MODEL_STAMP = "stamp.json"


def eval_paths(cfg: Config, method: str, mode: str, split: str) -> dict[str, Path]:
    """src.infer_alignment's outputs: rows, title-constrained rows, pointwise-ranking rows, metrics
    (valid at the top, test below)."""
    base = cfg.eval_dir / method
    if split != "valid":
        base = base / split
    return {
        "rows": base / f"{mode}.jsonl",
        "constrained_rows": base / f"{mode}.constrained.jsonl",
        "pointwise_rows": base / f"{mode}.pointwise.jsonl",
        "metrics": base / f"{mode}.metrics.json",
    }


def eval_metrics_path(cfg: Config, method: str, mode: str, split: str = "valid") -> Path:
    """Where src.infer_alignment writes a method's metrics."""
    return eval_paths(cfg, method, mode, split)["metrics"]


def baseline_metrics_path(cfg: Config, method: str) -> Path:
    """Where recmodel.baselines writes a baseline's metrics."""
    return cfg.recmodel_dir / "baselines" / f"{method}.metrics.json"


def aspect_slug(aspect: str) -> str:
    """File-name-safe form of an aspect ("game platforms" -> "game-platforms")."""
    slug = re.sub(r"[^a-z0-9]+", "-", aspect.lower()).strip("-")[:40].strip("-")
    if not slug:
        raise ConfigError(f"aspect {aspect!r} has no letters or digits to name its output file")
    return slug


def explain_file(cfg: Config, method: str, split: str, aspect: str = "") -> Path:
    """explain/<method>_<split>.jsonl, or explain/<method>_<split>_aspect-<slug>.jsonl."""
    suffix = f"_aspect-{aspect_slug(aspect)}" if aspect else ""
    return cfg.explain_dir / f"{method}_{split}{suffix}.jsonl"
