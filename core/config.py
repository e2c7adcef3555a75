"""Typed configuration: one YAML per dataset/profile, loaded into dataclasses.

Every stage reads the same `Config`. Unknown or misspelled keys are an error that names
the key and the file, because a silently ignored typo (``lerning_rate``) would make a
researcher believe they ran a setting they did not. Every output path is derived from
``paths.root`` so that swapping the dataset means editing one file.

Each stage owns one section; add a field to that section's dataclass (with a default and
a comment) and to the YAML files, nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: repository root (parent of this package); relative paths in configs resolve against it
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the file and key."""


# --------------------------------------------------------------------------- sections


@dataclass
class PathsConfig:
    #: all outputs of one dataset; "{name}" is replaced by dataset.name
    root: str = "outputs/{name}"
    #: raw downloads, shared by every config (git-ignored)
    raw_dir: str = "raw"
    #: converted/downloaded models, shared by every config (git-ignored)
    models_dir: str = "models"


@dataclass
class DatasetConfig:
    name: str = "ml100k"
    #: movielens | amazon | steam
    source: str = "movielens"
    #: folder under paths.raw_dir holding this dataset's raw files
    raw_subdir: str = "ml-100k"
    #: raw file names inside raw_subdir, by role (e.g. inter/item, reviews/meta, reviews/games)
    files: dict[str, str] = field(default_factory=dict)
    #: seed for user sampling
    seed: int = 2024
    #: drop interactions whose item has no (non-empty) title
    require_title: bool = True
    #: keep only the first (user, item) interaction
    dedup: bool = True
    #: iterative k-core before the top-N cut (0 = off)
    kcore: int = 5
    #: keep the N most frequent items (0 = all)
    top_n_items: int = 0
    #: keep users with at least this many interactions on the kept items (0 = off)
    min_user_inters: int = 0
    #: sample this many users, seeded (0 = all)
    sample_users: int = 0
    #: k-core again after sampling (0 = off)
    final_kcore: int = 5
    #: strip punctuation from text fields
    strip_punct: bool = False
    #: MovieLens only: interactions with rating below this are dropped (0 = keep all)
    min_rating: float = 0.0
    #: users with fewer interactions than this are dropped last (leave-one-out needs >= 3)
    min_seq_len: int = 3
    #: titles longer than this count as missing (0 = no limit); Amazon meta has HTML blobs
    max_title_chars: int = 0
    #: how preprocess.fetch gets the raw files: recbole | synthetic | urls | none
    fetch: str = "urls"
    #: per-role download URL overrides (role as in `files`); default: the public URL by file name
    urls: dict[str, str] = field(default_factory=dict)
    #: preprocess.synthetic: users and items of the generated MovieLens-format dataset
    synthetic_users: int = 120
    synthetic_items: int = 60


@dataclass
class KDConfig:
    """KD-SASRec student (EMKD-style score distillation)."""

    enabled: bool = True
    #: student sizes; 0 = the teacher's (recmodel.hidden_size / num_layers / num_heads /
    #: inner_size), so the student is the teacher's size unless set
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    temperature: float = 1.0
    epochs: int = 20
    lr: float = 1.0e-3
    #: student feed-forward width (0 = the teacher's) and dropout (hidden and attention)
    inner_size: int = 0
    dropout: float = 0.2


@dataclass
class RecModelConfig:
    #: sasrec | mf
    model: str = "sasrec"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256
    #: gelu | relu | swish
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.2
    attn_dropout: float = 0.2
    max_seq_len: int = 50
    #: ce (full softmax) | bce (sampled negatives)
    loss: str = "ce"
    num_negatives: int = 1
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100
    #: early stop after this many epochs without valid NDCG@10 gain
    patience: int = 5
    eval_ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    #: cpu | cuda | auto
    device: str = "auto"
    #: length of the exported "top" list
    export_topk: int = 20
    #: cap on exported train rows per user (most recent positions first; 0 = all)
    export_train_cap: int = 10
    #: similar items kept per item in item_sim.json
    sim_topk: int = 10
    #: share of items above which a score counts as positive for task 3 (paper: top 20%)
    pos_cut: float = 0.2
    #: share of items below which a score counts as negative for task 3 (paper: bottom 50%)
    neg_cut: float = 0.5
    #: full-ranking evaluation (valid/test metrics, early stopping): true = the user's whole
    #: history is masked (ours; UniRec's one_vs_all, which the original used, masks the
    #: user_history file too); false = only padding item 0 (RecBole's sequential protocol)
    eval_mask_history: bool = True
    #: max gradient norm (0 = no clipping; the original's UniRec run: 10)
    grad_clip: float = 0.0
    #: ReduceLROnPlateau factor on the valid metric, patience 1 epoch (0 = constant lr;
    #: the original's UniRec run: 0.1)
    lr_plateau_factor: float = 0.0
    kd: KDConfig = field(default_factory=KDConfig)


@dataclass
class DataGenConfig:
    seed: int = 2024
    #: cap on train samples per user for tasks 1/2 (most recent positions first)
    train_cap_per_user: int = 10
    #: train rows per user that each give task 3 a positive and a negative item (most recent
    #: first, within train_cap_per_user; 0 = every row). 1 = one pair per user
    binary_rows_per_user: int = 1
    #: max history titles shown in a prompt (most recent)
    max_hist_len: int = 9
    #: similar items per item in iid2sim
    num_sim: int = 3
    #: ShareGPT json file (relative to paths.raw_dir); empty = task 5 skipped
    sharegpt_file: str = ""
    sharegpt_train: int = 10000
    sharegpt_valid: int = 1000
    #: max characters of a ShareGPT first turn kept
    sharegpt_max_chars: int = 2000
    #: task 5 records carry the whole conversation ("messages") and train every assistant
    #: turn, whole turns within llm.max_length (the original); false = the first turn only
    sharegpt_multi_turn: bool = True
    #: offline stand-in for ShareGPT when sharegpt_file is empty: this many general
    #: instructions (data_gen.templates.REPLAY) answered once by the *base* LLM and cached
    #: as a ShareGPT json (`python -m src.replay`, <root>/replay/sharegpt_replay.json).
    #: Replaying the model's own answers keeps long-form writing alive during alignment
    #: (section 2.2, task 5's purpose); 0 = off (the paper uses real ShareGPT)
    sharegpt_replay: int = 0
    #: new-token cap of each replayed answer
    replay_max_new_tokens: int = 160
    #: users sampled for explanation prompts per split (paper: 500 valid / 2000 train)
    explan_valid_users: int = 500
    explan_train_users: int = 2000
    #: ask the API for per-user preference summaries (uid2summary); needs api.base_url/model
    summaries: bool = True
    #: rows feeding the *_valid.json evaluation files: test (paper's leave-one-out test) | valid
    eval_split: str = "test"
    #: cap on samples per task type in the train files (0 = all; paper scale)
    max_train_per_task: int = 0
    #: cap on samples per task type in the valid/test files (0 = all; paper scale)
    max_eval_per_task: int = 0
    #: items in the iid2title evaluation records of the valid/test files (0 = all items)
    eval_iid2title_items: int = 200
    #: max characters of an item description/feature/tags text in task 4 (0 = no limit)
    max_field_chars: int = 1000


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    #: modules trained and saved whole beside LoRA (the original v1: embed_tokens, lm_head);
    #: tied input/output embeddings stay tied (one trained matrix; see src.model.apply_lora)
    modules_to_save: list[str] = field(default_factory=lambda: ["embed_tokens", "lm_head"])


@dataclass
class LLMConfig:
    #: tiny | smollm2-135m-instruct | any HF path (e.g. lmsys/vicuna-7b-v1.3)
    base_model: str = "models/smollm2-135m-instruct"
    #: auto (tokenizer's chat template, else vicuna) | vicuna
    chat_format: str = "auto"
    max_length: int = 1024
    #: auto (the faster of float32 / bfloat16 on this machine, measured: src.precision) | float32 | bfloat16 | float16
    torch_dtype: str = "float32"
    lora: LoraConfig = field(default_factory=LoraConfig)
    #: tiny profile only: architecture of the LLaMA built from a config
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    tiny_vocab_size: int = 2000


@dataclass
class TrainConfig:
    epochs: float = 1.0
    lr: float = 1.0e-4
    warmup_ratio: float = 0.1
    per_device_batch_size: int = 8
    grad_accum: int = 1
    eval_steps: int = 200
    save_steps: int = 200
    logging_steps: int = 10
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    #: path of a DeepSpeed json (e.g. configs/deepspeed/zero2.json); empty = none
    deepspeed: str = ""
    #: cap on training / eval samples (0 = all); keeps CPU runs inside their budget
    max_train_samples: int = 0
    #: train.max_train_samples per RecExplainer variant ({behaviour: N, intention: N, both: N});
    #: a variant left out uses train.max_train_samples. WHY: the variants learn at different
    #: rates per token (I and H need passes over the task-3 pairs, B's prompts are the longest),
    #: so one budget for all three spends a CPU hour badly
    max_train_samples_per_type: dict[str, int] = field(default_factory=dict)
    #: wall-clock seconds of training per RecExplainer variant ({behaviour: S, intention: S,
    #: both: S}; a variant left out, or 0, has none): before training, forward+backward is
    #: timed on real batches and the variant keeps as many of its records as fit
    #: (src.budget). A ceiling on the records above, never more. Evaluation passes, probes and
    #: checkpoints are not counted. WHY: the same records take 2-3x longer on some CPUs.
    time_budget_s: dict[str, float] = field(default_factory=dict)
    #: micro-batches timed to size train.time_budget_s (after one warm-up batch); their time
    #: counts against the budget. Batch costs vary ~6x with the padded width, so few are noisy
    #: (I's ML-100K records: 4 batches read 179 or 335 tokens/s by the draw, 12-24 read
    #: 251-255, training ran 252-288)
    budget_calibration_batches: int = 16
    max_eval_samples: int = 0
    #: task record types (e.g. uid2next, iid2sim, uid2hist) dropped from the train and valid
    #: files before any subsampling; the Figure 7 ablation (src.ablation) sets it per variant
    exclude_tasks: list[str] = field(default_factory=list)
    #: share of the train.max_train_samples budget per record type, e.g. {uid2next: 4,
    #: uidiid2binary: 2}, or per type in one form ("uid2next:hybrid"), or one such mapping
    #: per task type ({behaviour: {...}, both: {...}}); types left out are not trained;
    #: empty = a uniform random sample of the file (the paper's mix). Small types repeat.
    task_mix: dict[str, float] = field(default_factory=dict)
    #: learning rate of the two projectors (0 = train.lr). They start from scratch while
    #: LoRA starts from a trained LM, so a short run wants them faster.
    projector_lr: float = 0.0
    #: full-batch steps of projector pre-alignment before LLM training (0 = off, the paper):
    #: the item projector regresses each item's recommender vector onto the LLM's mean
    #: input embedding of its title, the user projector regresses a user's vector onto that
    #: of the recommender's top-1 title; costs seconds, no LLM forward pass
    prealign_steps: int = 0
    prealign_lr: float = 1.0e-3
    #: pre-alignment target of the user projector: the mean title embedding of the
    #: recommender's top-k items for the user (1 = its top-1 title, the uid2next answer)
    prealign_user_topk: int = 1
    #: alignment learning curve: evaluate a fixed probe set at this many evenly spaced
    #: points of training (plus step 0); 0 = off. Rows go to llm/<T>/probe.jsonl.
    probe_points: int = 0
    #: probe records per inference mode (seeded sample of the evaluation file)
    probe_samples: dict[str, int] = field(default_factory=lambda: {"uid2next": 40, "uidiid2binary": 100})
    #: how answer-token losses are averaged: "token" (HF's default and the original's: a
    #: record weighs by its answer length, so 5-title rankings and histories drown Yes/No
    #: answers) or "record" (each record's mean token loss, then the mean over records)
    loss_weighting: str = "token"
    seed: int = 42
    #: any other field of transformers.TrainingArguments, passed through as given (e.g.
    #: {weight_decay: 0.01, lr_scheduler_type: cosine, max_grad_norm: 0.5}); a name that is
    #: not a TrainingArguments field, or one that a train.* key above already sets, is an error
    trainer_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    #: prompts per generate() call (uid2next runs num_beams sequences per prompt)
    batch_size: int = 8
    #: uid2next beam width; all beams are returned as the top-k (paper: 5 beams, 5 returned)
    num_beams: int = 5
    #: prompts per generate() call under beam search, when smaller than batch_size (0 = batch_size):
    #: beam search copies the whole KV cache every step, and on some CPUs a large cache costs
    #: far more per prompt than a small one (see configs/cpu.yaml)
    beam_batch_size: int = 0
    #: new-token cap for one-title answers (uid2next, iid2title)
    max_new_tokens: int = 64
    #: new-token cap for list answers (uidiid2rank: 5 titles, uid2hist: the history titles)
    max_new_tokens_list: int = 160
    #: cap on samples per inference mode: a seeded random sample of the task file (0 = all)
    max_samples: int = 0
    #: seed of that sample (the same records for every method; change it to redraw)
    sample_seed: int = 42
    #: per-mode caps that override max_samples, e.g. {uid2next: 40} (beam search costs most)
    max_samples_per_mode: dict[str, int] = field(default_factory=dict)
    #: in-context examples for the ICL baseline
    icl_examples: int = 2
    #: the ICL baselines (none_icl, gpt4_icl) only: a cap on their records per mode on top of
    #: the mode's own (0 = none, the same records as every method): their prompts carry the
    #: examples and cost 2-3x a plain prompt. A smaller cap draws a subset of the same sample
    icl_max_samples: int = 0
    #: the ICL baselines also get the constrained run of constrained_modes (with eval.constrained)
    icl_constrained: bool = True
    #: also report constrained decoding (its own "(title-constrained)" row of Table 1) for
    #: the modes of constrained_modes
    constrained: bool = True
    #: uid2next: beams restricted to catalogue titles; uidiid2rank: the answer restricted to
    #: an order of the record's own candidates (so ranking is scored apart from spelling)
    constrained_modes: list[str] = field(default_factory=lambda: ["uid2next", "uidiid2rank"])
    #: task 2 also ranked pointwise (its own "(pointwise)" row of Table 1): each candidate asked
    #: as a task-3 question, ordered by the model's logp(Yes) - logp(No). Measures whether the
    #: model knows the recommender's order when it cannot yet write it as a list. Local
    #: models only (an API gives no log-probabilities), not the ICL baselines
    pointwise_rank: bool = True
    #: titles an API model (gpt4 / GPT4-ICL) is asked for on uid2next, scored as a ranked
    #: list for HR@5 / NDCG@5 (paper 3.1.1: K = 5; 1 = one guess, no extra instruction)
    api_uid2next_k: int = 5
    #: appended to the uid2next question for the API model when api_uid2next_k > 1 ({k} filled in)
    api_uid2next_instruction: str = (
        "Answer with the {k} most likely item titles, most likely first, as a numbered list "
        "with one title per line and nothing else."
    )
    #: cpu | cuda | auto
    device: str = "auto"


@dataclass
class ExplainConfig:
    #: new-token cap of an explanation (the original's infer_explan.sh: 500)
    max_new_tokens: int = 500
    #: explanations are at least this long (end token suppressed before; 0 = off; the
    #: original's infer_explan.sh: 150)
    min_new_tokens: int = 0
    #: HF generate's repetition_penalty (1.0 = off, the original: greedy with no penalty)
    repetition_penalty: float = 1.0
    #: HF generate's no_repeat_ngram_size (0 = off, the original)
    no_repeat_ngram_size: int = 0
    batch_size: int = 4
    #: cap on explanation prompts per split (0 = all)
    max_samples: int = 0
    #: optional aspect instruction for controllable explanations (empty = none)
    aspect: str = ""
    #: judge retries for unparseable ratings
    judge_retries: int = 3
    #: new-token cap of a judge's answer: a verdict and its reason (an answer cut at this
    #: length is re-asked for the rating alone, never taken as complete)
    judge_max_tokens: int = 1024
    #: appended to the question for controllable explanations (paper 3.5.2); {aspect} is filled in
    aspect_template: str = "Please explain your decision from the perspective of {aspect}."
    #: cap on explanations judged per method (paper: 500; 0 = all)
    judge_max_samples: int = 500
    #: judge model / deployment (empty = api.model or env ENGINE); the paper used GPT-4
    judge_model: str = ""
    #: model / deployment for the "chatgpt" explanation method (empty = api.model or env ENGINE)
    chatgpt_model: str = ""


@dataclass
class APIConfig:
    """One OpenAI-compatible endpoint family (OpenAI, Azure OpenAI, vLLM, ...).

    Keys are read from environment variables, never from the YAML, so configs can be
    committed and shared.
    """

    #: openai | azure
    api_type: str = "openai"
    #: base URL (empty = OpenAI's default for api_type openai); env OPENAI_API_BASE wins
    base_url: str = ""
    #: model / Azure deployment name; env ENGINE wins
    model: str = ""
    api_version: str = "2024-02-01"
    max_concurrency: int = 4
    max_retries: int = 6
    timeout_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 512
    #: first retry waits about this long (doubled per retry, with jitter)
    backoff_base_s: float = 1.0
    #: no single wait is longer than this
    backoff_max_s: float = 60.0
    #: per-request disk cache under cache_dir/api (turning it off re-pays every request)
    cache: bool = True
    #: circuit breaker: after this many consecutive attempts that failed for connection,
    #: timeout or server (5xx) reasons, with no success in between, the batch stops with one
    #: error instead of retrying every remaining request on its own (0 = off)
    max_consecutive_failures: int = 8


@dataclass
class DiscriminatorConfig:
    #: BERT-family encoder path (default: all-MiniLM-L6-v2 from the fetch stage)
    encoder: str = "models/all-minilm-l6-v2"
    #: tokens per explanation; lr, epochs and batch: the original's run_cls.sh / run_reg.sh
    #: (max_seq_length 512, 3e-5, 3 epochs, 8 per device x 1 accumulation)
    max_length: int = 512
    epochs: float = 3.0
    lr: float = 3.0e-5
    batch_size: int = 8
    test_ratio: float = 0.2
    #: explanations per method for the classifier (paper: 2500)
    per_method: int = 2500
    seed: int = 42
    #: methods told apart by the classifier (paper: RecExplainer-H, Vicuna, ChatGPT)
    cls_methods: list[str] = field(default_factory=lambda: ["both", "none", "chatgpt"])
    #: methods with a score predictor each (Table 3)
    reg_methods: list[str] = field(default_factory=lambda: ["both", "none", "chatgpt"])
    #: explanation splits pooled as discriminator data (explain/<method>_<split>.jsonl)
    splits: list[str] = field(default_factory=lambda: ["train", "valid"])
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    #: regression targets are standardised for training (MSE is reported in raw score units)
    reg_standardize: bool = True
    #: 0: Table 3 on the paper's one train/test split. K >= 2: K-fold cross-fitting over the
    #: train and test pairs together, every pair scored by a predictor not trained on it
    #: (K fine-tunings per method): the whole set as test pairs, for runs whose test split
    #: holds a few dozen (the CPU profiles' 16)
    reg_folds: int = 0
    #: keep the fine-tuned classifier / regressors under discriminator/{cls,reg}/model*
    save_model: bool = False
    #: cpu | cuda | auto
    device: str = "auto"


@dataclass
class PipelineConfig:
    """What `shell/run_all.sh` runs; each list names methods of the paper's tables."""

    #: RecExplainer variants to train (B, I, H)
    train_types: list[str] = field(default_factory=lambda: ["behaviour", "intention", "both"])
    #: Table 1 LLM methods: none (base LLM), none_icl, gpt4_icl (needs an API), behaviour, intention, both
    align_methods: list[str] = field(
        default_factory=lambda: ["none", "none_icl", "gpt4_icl", "behaviour", "intention", "both"]
    )
    align_modes: list[str] = field(default_factory=lambda: ["uid2next", "uidiid2rank", "uidiid2binary", "uid2hist"])
    #: explanation generators: none (base LLM), behaviour, intention, both, chatgpt (needs an API)
    explain_methods: list[str] = field(default_factory=lambda: ["none", "behaviour", "intention", "both", "chatgpt"])
    #: valid feeds Table 2; train feeds the discriminator and score predictor
    explain_splits: list[str] = field(default_factory=lambda: ["valid", "train"])
    #: wall-clock seconds for the whole `bash shell/run_all.sh`, from its start (0 = no
    #: limit). Before each training stage, what is left of it, less the predicted time of the
    #: stages after training, becomes that variant's ``train.time_budget_s`` (src.deadline).
    #: WHY: the same records train 2-3x slower on some CPUs, so only a limit in seconds,
    #: measured on the machine at hand, keeps the CPU run to its hour everywhere.
    time_limit_s: float = 0
    #: how the training time under time_limit_s is split between the variants (relative
    #: weights; a variant left out gets 1)
    time_shares: dict[str, float] = field(default_factory=dict)


class _UnderRoot:
    """A read-only Config attribute for a folder under ``paths.root``, named once."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, cfg: "Config | None", owner: type | None = None) -> Any:
        return self if cfg is None else cfg.root / self.name


@dataclass
class Config:
    #: name of the profile (tiny | ml100k | paper); informative
    profile: str = "ml100k"
    seed: int = 42
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    recmodel: RecModelConfig = field(default_factory=RecModelConfig)
    data_gen: DataGenConfig = field(default_factory=DataGenConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    api: APIConfig = field(default_factory=APIConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    #: file this config was loaded from (set by load_config)
    source_file: str = ""

    # ------------------------------------------------------------------ derived paths
    def resolve(self, p: str | Path) -> Path:
        """A config path: absolute stays, relative is taken from the repository root."""
        p = Path(p)
        return p if p.is_absolute() else REPO_ROOT / p

    def resolve_model(self, p: str | Path) -> Path:
        """A model path: ``models/<name>`` lives in ``paths.models_dir`` (where the fetch
        stage puts converted models), anything else as :meth:`resolve`."""
        parts = Path(p).parts
        if parts and parts[0] == "models" and not Path(p).is_absolute():
            return self.models_dir.joinpath(*parts[1:])
        return self.resolve(p)

    @property
    def root(self) -> Path:
        return self.resolve(self.paths.root.format(name=self.dataset.name))

    @property
    def raw_dir(self) -> Path:
        return self.resolve(self.paths.raw_dir)

    @property
    def dataset_raw_dir(self) -> Path:
        return self.raw_dir / self.dataset.raw_subdir

    @property
    def models_dir(self) -> Path:
        return self.resolve(self.paths.models_dir)

    # every stage's output folder under paths.root (cfg.llm_dir -> <root>/llm)
    data_dir = _UnderRoot("data")
    recmodel_dir = _UnderRoot("recmodel")
    tasks_dir = _UnderRoot("tasks")
    llm_dir = _UnderRoot("llm")
    eval_dir = _UnderRoot("eval")
    explain_dir = _UnderRoot("explain")
    judge_dir = _UnderRoot("judge")
    discriminator_dir = _UnderRoot("discriminator")
    tables_dir = _UnderRoot("tables")
    cache_dir = _UnderRoot("cache")

    @property
    def replay_file(self) -> Path:
        """The ShareGPT stand-in written by src.replay (data_gen.sharegpt_replay)."""
        return self.root / "replay" / "sharegpt_replay.json"


# --------------------------------------------------------------------------- loading


def _build(cls: type, data: Any, where: str, src: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: '{where or 'top level'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{src}: unknown config key '{key}' (known keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name, src)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, src: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where, src)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where, src)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{src}: '{where}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, where, src) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: '{where}' must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        # each value of a numeric mapping is checked as a number field is (so YAML 1.1's string
        # `1e-06`, how Python prints 0.000001, is the number it spells); a mapping among them
        # is a per-variant entry (train.task_mix), checked where it is used
        return {k: v if isinstance(v, dict) or val_tp not in (int, float) else _coerce(val_tp, v, f"{where}.{k}", src)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{src}: '{where}' must be true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:  # via float: "2e2" is a number to YAML 1.1's reader only as a string
                value = float(value) if isinstance(value, str) else tp(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{src}: '{where}' must be a number, got {value!r}") from None
        if tp is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{src}: '{where}' must be an integer, got {value!r}")
            value = int(value)
        return tp(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{src}: '{where}' must be a string, got {value!r}")
        return str(value)
    return value


# --------------------------------------------------------------------------- ranges

#: lower bounds of every count, size, cap and length, checked when a config loads:
#: {dotted key: (bound, strict, what it means)}; ``strict`` = the bound itself is refused.
#: WHY one table: a 0 batch size or beam width used to surface as a raw traceback deep in a
#: stage, ``train.epochs=0`` as a model marked done after 0 steps, and a negative cap as
#: "all" (``items[:-1]``-style slicing), each long after ``--force`` had deleted outputs.
#: A mapping-valued key (``eval.max_samples_per_mode``) bounds each of its values.
#: Add a key here together with its dataclass field.
_POSITIVE = (0, True, "")
_RANGES: dict[str, tuple[float, bool, str]] = {
    "dataset.kcore": (0, False, "0 = off"),
    "dataset.top_n_items": (0, False, "0 = all"),
    "dataset.min_user_inters": (0, False, "0 = off"),
    "dataset.sample_users": (0, False, "0 = all"),
    "dataset.final_kcore": (0, False, "0 = off"),
    "dataset.min_rating": (0, False, "0 = keep all"),
    "dataset.min_seq_len": (0, False, "0 = off; preprocess itself needs >= 3"),
    "dataset.max_title_chars": (0, False, "0 = no limit"),
    "dataset.synthetic_users": (1, False, ""),
    "dataset.synthetic_items": (1, False, ""),
    "recmodel.hidden_size": (1, False, ""),
    "recmodel.num_layers": (0, False, ""),
    "recmodel.num_heads": (1, False, ""),
    "recmodel.inner_size": (1, False, ""),
    "recmodel.max_seq_len": (1, False, ""),
    "recmodel.num_negatives": (1, False, ""),
    "recmodel.batch_size": (1, False, ""),
    "recmodel.epochs": (1, False, ""),
    "recmodel.patience": (1, False, "epochs without gain before early stop"),
    "recmodel.export_topk": (1, False, ""),
    "recmodel.export_train_cap": (0, False, "0 = all"),
    "recmodel.sim_topk": (1, False, ""),
    "recmodel.grad_clip": (0, False, "0 = no clipping"),
    "recmodel.kd.hidden_size": (0, False, "0 = the teacher's"),
    "recmodel.kd.num_layers": (0, False, "0 = the teacher's"),
    "recmodel.kd.num_heads": (0, False, "0 = the teacher's"),
    "recmodel.kd.inner_size": (0, False, "0 = the teacher's"),
    "recmodel.kd.epochs": (1, False, ""),
    "recmodel.kd.temperature": _POSITIVE,
    "data_gen.train_cap_per_user": (0, False, ""),
    "data_gen.max_hist_len": (0, False, ""),
    "data_gen.binary_rows_per_user": (0, False, "0 = every row"),
    "data_gen.num_sim": (0, False, ""),
    "data_gen.sharegpt_train": (0, False, ""),
    "data_gen.sharegpt_valid": (0, False, ""),
    "data_gen.sharegpt_max_chars": (0, False, ""),
    "data_gen.explan_valid_users": (0, False, ""),
    "data_gen.explan_train_users": (0, False, ""),
    "data_gen.max_train_per_task": (0, False, "0 = all"),
    "data_gen.max_eval_per_task": (0, False, "0 = all"),
    "data_gen.eval_iid2title_items": (0, False, "0 = all items"),
    "data_gen.max_field_chars": (0, False, "0 = no limit"),
    "data_gen.sharegpt_replay": (0, False, "0 = off"),
    "data_gen.replay_max_new_tokens": (1, False, ""),
    "llm.max_length": (1, False, "tokens"),
    "llm.lora.r": (1, False, ""),
    "llm.lora.alpha": (1, False, ""),
    "llm.tiny_hidden_size": (1, False, ""),
    "llm.tiny_layers": (1, False, ""),
    "llm.tiny_heads": (1, False, ""),
    "llm.tiny_vocab_size": (1, False, ""),
    "train.epochs": (0, True, "0 epochs would mark a model trained after 0 steps"),
    "train.lr": _POSITIVE,
    "train.warmup_ratio": (0, False, "a float < 1 is a share of the steps"),
    "train.per_device_batch_size": (1, False, ""),
    "train.grad_accum": (1, False, ""),
    "train.eval_steps": (1, False, ""),
    "train.save_steps": (1, False, ""),
    "train.logging_steps": (1, False, ""),
    "train.max_train_samples": (0, False, "0 = all"),
    "train.max_train_samples_per_type": (0, False, "0 = all"),
    "train.max_eval_samples": (0, False, "0 = all"),
    "train.time_budget_s": (0, False, "0 = no budget"),
    "pipeline.time_limit_s": (0, False, "0 = no limit"),
    "pipeline.time_shares": (0, True, "a variant's share of the training time"),
    "train.budget_calibration_batches": (1, False, ""),
    "train.projector_lr": (0, False, "0 = train.lr"),
    "train.prealign_steps": (0, False, "0 = off"),
    "train.prealign_lr": _POSITIVE,
    "train.prealign_user_topk": (1, False, ""),
    "train.probe_points": (0, False, "0 = off"),
    "train.probe_samples": (0, False, "records per mode"),
    "eval.batch_size": (1, False, ""),
    "eval.num_beams": (1, False, ""),
    "eval.beam_batch_size": (0, False, "0 = eval.batch_size"),
    "eval.max_new_tokens": (1, False, ""),
    "eval.max_new_tokens_list": (1, False, ""),
    "eval.max_samples": (0, False, "0 = all"),
    "eval.max_samples_per_mode": (0, False, "0 = all"),
    "eval.icl_examples": (0, False, ""),
    "eval.icl_max_samples": (0, False, "0 = no extra cap"),
    "eval.api_uid2next_k": (1, False, ""),
    "explain.max_new_tokens": (1, False, ""),
    "explain.min_new_tokens": (0, False, "0 = off"),
    "explain.batch_size": (1, False, ""),
    "explain.max_samples": (0, False, "0 = all"),
    "explain.judge_retries": (0, False, ""),
    "explain.judge_max_samples": (0, False, "0 = all"),
    "explain.judge_max_tokens": (1, False, ""),
    "api.max_concurrency": (1, False, ""),
    "api.max_retries": (0, False, ""),
    "api.timeout_s": _POSITIVE,
    "api.max_tokens": (1, False, ""),
    "api.backoff_base_s": (0, False, ""),
    "api.backoff_max_s": (0, False, ""),
    "api.max_consecutive_failures": (0, False, "0 = off"),
    "discriminator.max_length": (1, False, "tokens"),
    "discriminator.epochs": _POSITIVE,
    "discriminator.lr": _POSITIVE,
    "discriminator.batch_size": (1, False, ""),
    "discriminator.per_method": (1, False, ""),
}


def _get_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_ranges(cfg: Config, provenance: dict[str, str] | None = None, src: str = "") -> None:
    """Raise one ConfigError for the first value of :data:`_RANGES` out of its range.

    The message names the config file `src`, the key, the bound, what the value means,
    and, from `provenance`, a base file or ``--set`` that set it.
    """
    for key, (bound, strict, meaning) in _RANGES.items():
        value = _get_dotted(cfg, key)
        origin = (provenance or {}).get(key, PROV_DEFAULT)
        if origin == PROV_OVERRIDE:
            set_by = " (set by --set)"
        elif origin == PROV_DEFAULT or not src or Path(origin).resolve() == Path(src).resolve():
            set_by = ""
        else:
            set_by = f" (set in base config {origin})"
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            name = f"{key}.{sub}" if sub is not None else key
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                if sub is None:
                    continue  # the type check of _coerce already ran for scalar fields
                raise ConfigError(f"{src}: {name} must be a number, got {v!r}{set_by}")
            if v < bound or (strict and v == bound):
                op = ">" if strict else ">="
                bound_s = int(bound) if float(bound).is_integer() else bound
                why = f" ({meaning})" if meaning else ""
                raise ConfigError(f"{src}: {name} must be {op} {bound_s}{why}, got {v!r}{set_by}")


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


#: provenance label of a leaf set by a ``--set`` override (files are labelled by their path)
PROV_OVERRIDE = "--set"
#: provenance label of a leaf that no file or override set (the dataclass default)
PROV_DEFAULT = "default"


def _section_cls(dotted: str) -> type | None:
    """The dataclass of the section at ``dotted`` ("" = Config), None if it is not a section."""
    cls: Any = Config
    for part in [p for p in dotted.split(".") if p]:
        sub = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if not dataclasses.is_dataclass(sub):
            return None
        cls = sub
    return cls


def _leaves(data: Any, cls: type | None, prefix: str = "") -> list[str]:
    """Dotted names of the leaves of a (partial) config mapping.

    A dataclass section is walked key by key; anything else, mapping-valued settings such
    as ``dataset.files`` included, is one leaf (a child replaces it whole).
    """
    if cls is None or not isinstance(data, dict):
        return [prefix] if prefix else []
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for k, v in data.items():
        sub = hints.get(k)
        name = f"{prefix}.{k}" if prefix else str(k)
        out += _leaves(v, sub, name) if dataclasses.is_dataclass(sub) and isinstance(v, dict) else [name]
    return out


def _replace_prov(prov: dict[str, str], key: str, new: dict[str, str]) -> None:
    """Forget what set ``key`` and everything under it, then record ``new`` there."""
    for k in [k for k in prov if k == key or k.startswith(key + ".")]:
        del prov[k]
    prov.update({k: v for k, v in new.items() if k == key or k.startswith(key + ".")})


def load_config(
    path: str | Path, overrides: list[str] | None = None, provenance: dict[str, str] | None = None
) -> Config:
    """Load a YAML config, apply ``key.sub=value`` overrides, and validate every key.

    A YAML may start with ``base: other.yaml`` or ``base: [a.yaml, b.yaml]`` (relative to
    itself) to inherit from other configs: the bases are applied in order (a later one wins),
    then the file's own keys, section by section.

    ``provenance``, when given, is filled with ``{dotted leaf: where it was set}``: the
    resolved path of the YAML file, or ``"--set"`` for an override. Leaves missing from it
    keep their dataclass default.
    """
    path = Path(path)
    if not path.is_file():
        alt = REPO_ROOT / path
        if not alt.is_file():
            raise ConfigError(f"config file not found: {path}")
        path = alt
    prov: dict[str, str] = {}
    data = _read_yaml(path, provenance=prov)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key.sub=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"override '{ov}': the value {raw!r} is not valid YAML ({first}); "
                              "quote a string (--set 'key=\"text\"') or write a list as [a, b]") from None
        _check_override_key(key, ov)
        _set_dotted(data, key, value)
        # the leaf it lands in: a key inside a mapping setting (dataset.files.inter) marks
        # the whole setting; a whole section (recmodel.kd={...}) marks each key it gives
        parts = key.split(".")
        n = 1
        while n < len(parts) and _section_cls(".".join(parts[:n])) is not None:
            n += 1
        leaf = ".".join(parts[:n])
        sub = _section_cls(leaf)
        leaves = (_leaves(value, sub, leaf) or [leaf]) if leaf == key and sub is not None else [leaf]
        _replace_prov(prov, leaf, {k: PROV_OVERRIDE for k in leaves})
    cfg = _build(Config, data, "", str(path))
    cfg.source_file = str(path)
    check_ranges(cfg, prov, str(path))
    if provenance is not None:
        provenance.clear()
        provenance.update(prov)
    return cfg


def _merge(
    base: dict,
    top: dict,
    cls: type = None,  # type: ignore[assignment]
    prov: dict[str, str] | None = None,
    top_prov: dict[str, str] | None = None,
    prefix: str = "",
) -> dict:
    """Overlay `top` on `base` section by section.

    Only dataclass sections merge key by key; a mapping-valued setting (e.g.
    ``dataset.files``) is replaced whole, so a child config never inherits stale entries.
    With ``prov``, the provenance of `base`'s leaves, each leaf `top` sets takes its entry
    from ``top_prov`` (the provenance of `top`'s leaves).
    """
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for k, v in top.items():
        sub = hints.get(k)
        name = f"{prefix}.{k}" if prefix else str(k)
        if dataclasses.is_dataclass(sub) and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, sub, prov, top_prov, name)
        else:
            out[k] = v
            if prov is not None:
                _replace_prov(prov, name, top_prov or {})
    return out


def _check_override_key(key: str, ov: str) -> None:
    """An unknown key in ``--set`` is named as the override's, not the config file's."""
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            return  # inside a mapping setting (dataset.files.inter): any key
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if part not in names:
            raise ConfigError(f"--set {ov}: unknown config key '{'.'.join(parts[:i + 1])}' "
                              f"(known keys here: {', '.join(sorted(names))})")
        cls = typing.get_type_hints(cls)[part]


def _check_keys(data: dict, cls: type, where: str, src: str) -> None:
    """Reject unknown keys in one file's own mapping (as :func:`_build` does for the merge)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{src}: unknown config key '{key}' (known keys here: {', '.join(sorted(names))})")
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            _check_keys(v, hints[k], f"{where}.{k}" if where else k, src)


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), provenance: dict[str, str] | None = None) -> dict:
    """One YAML file with its ``base:`` chain applied; fills ``provenance`` for its leaves."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise ConfigError(f"{path}: circular 'base:' chain ({chain})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None or base == "" or base == []:
        bases: list[str] = []
    elif isinstance(base, str):
        bases = [base]
    elif isinstance(base, list) and base and all(isinstance(b, str) and b for b in base):
        bases = list(base)
    else:
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got {base!r}")
    merged: dict = {}
    prov: dict[str, str] = {}
    for b in bases:
        base_path = (path.parent / b).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base config '{b}' not found at {base_path}")
        base_prov: dict[str, str] = {}
        base_data = _read_yaml(base_path, seen + (path,), base_prov)
        merged = _merge(merged, base_data, prov=prov, top_prov=base_prov)
    _check_keys(data, Config, "", str(path))  # a typo names the file that holds it
    own_prov = {leaf: str(path) for leaf in _leaves(data, Config)}
    merged = _merge(merged, data, prov=prov, top_prov=own_prov)
    if provenance is not None:
        provenance.update(prov)
    return merged


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The flags every stage shares."""
    parser.add_argument("--config", default="configs/ml100k.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=2 (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="redo work whose outputs already exist")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def config_stage_main(
    argv: list[str] | None, doc: str, body: Callable[[Config, argparse.Namespace], object], *,
    prog: str | None = None, add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The whole entry point of a stage that reads a config (--config/--set/--force plus
    `add_args`): parse, load, run `body(cfg, args)` under ``core.utils.run_stage`` (one
    ``error:`` line and exit 2 for a bad input). Returns the exit status for ``sys.exit``."""
    from core.utils import run_stage

    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    return run_stage(lambda: body(config_from_args(args), args))


def config_arg(cfg: Config) -> str:
    """The --config value to print in a hint (relative to the repository when inside it)."""
    conf = cfg.source_file or "configs/ml100k.yaml"
    try:
        return str(Path(conf).resolve().relative_to(cfg.resolve(".").resolve()))
    except ValueError:
        return conf
