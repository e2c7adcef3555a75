"""RecExplainer model: a causal LM that reads recommender embeddings at marker tokens.

API summary. ``load_base(cfg) -> (model, tokenizer)`` loads ``cfg.llm.base_model`` (a
Hugging Face causal-LM path, resolved against the repository root, or ``tiny``: a small
LLaMA built from a config plus a BPE tokenizer trained on the dataset's own text, saved
once under ``cfg.llm_dir/tiny_base``) and adds the special tokens ``<user>``/``<item>``
(embeddings resized, new rows initialised deterministically). ``RecExplainer(lm,
tokenizer, rec_encoder)`` wraps that LM (plain or peft-wrapped) with two projectors
``Linear(d_rec, H/2) -> GELU -> Linear(H/2, H)`` (paper eq. 1) and the frozen recommender;
``embed_inputs(input_ids, user_histories, item_ids)`` returns ``inputs_embeds`` in which
every ``<user>`` row has the projected user vector added and every ``<item>`` row the
projected item vector (one encoder row per marker, in row-major order of the batch);
``forward(input_ids, attention_mask, labels=None, user_histories=None, item_ids=None)``
returns the loss computed only at the answer positions (the LM head runs on those rows
only) and, without labels, full logits; ``generate(input_ids, attention_mask,
user_histories=None, item_ids=None, **gen_kwargs)`` calls HF generate with both
``input_ids`` and the injected ``inputs_embeds`` (KV cache on) and returns, like plain HF
generate, the prompt ids followed by the new tokens; ``<user>``/``<item>`` are always
suppressed. ``load_trained(cfg, task_type, device="cpu", rec_encoder=None) ->
(RecExplainer, tokenizer)`` reloads ``cfg.llm_dir/<task_type>/`` (adapter or full
weights + projectors.pt + tokenizer) in one call; ``task_type="none"`` is the untrained
base model whose projectors output zero. ``save_trained(model, tokenizer, out_dir)`` writes
that layout. Batches come from :func:`src.chat.collate_for_generation` (inference) and
:class:`src.data.TaskCollator` (training).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from src.chat import marker_ids
from core.config import Config, ConfigError
from core.registry import ITEM_TOKEN, LOADABLE_TASK_TYPES, MARKER_TOKENS, MODEL_STAMP, TRAIN_TYPES, USER_TOKEN
from core.utils import StageError, model_dir_or_hub_id, read_json, weight_file_problem

log = logging.getLogger(__name__)

TASK_TYPES = TRAIN_TYPES
PROJECTORS_FILE = "projectors.pt"
META_FILE = "meta.json"
STAMP_FILE = MODEL_STAMP  # the settings and inputs a trained model was made from (core.stamps)

#: chat template of the tiny tokenizer: role cue, content, end token (like ChatML, shorter)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]


class RecEncoder(Protocol):
    """The frozen recommender seen by the LLM (implemented in recmodel.encoder)."""

    dim: int

    def encode_users(self, histories: torch.Tensor) -> torch.Tensor: ...  # (B, L) -> (B, d)

    def encode_items(self, iids: torch.Tensor) -> torch.Tensor: ...  # (B,) -> (B, d)


# --------------------------------------------------------------------------- base model


def _dtype(name: str, model_path: str | None = None) -> torch.dtype:
    """The torch dtype of llm.torch_dtype; ``auto`` measures which is faster here (src.precision)."""
    if name == "auto":
        if model_path is None:
            raise ConfigError("llm.torch_dtype=auto needs the model path to measure")
        from src.precision import pick_dtype

        name = pick_dtype(model_path)
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"llm.torch_dtype must be auto | float32 | bfloat16 | float16, got {name!r}") from None


def _tiny_corpus(cfg: Config) -> list[str]:
    """Text the tiny tokenizer is trained on: item titles and task questions/answers.

    Whatever of it exists is used; a few template words are always included so that a
    tokenizer built before the task files exist still has the prompt vocabulary.
    """
    texts = [
        "USER: ASSISTANT: The user has interacted with the following items in order.",
        "Predict the next item the user will interact with. Answer with the title only.",
        "Yes No. Is the user likely to interact with the item? Rank the candidates.",
        "What is the title of the item? Summarise the preferences of the user.",
    ]
    items = cfg.data_dir / "items.jsonl"
    if items.is_file():
        with open(items, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    texts.append(str(row.get("title", "")))
                    for key in ("description", "tags", "genres"):
                        if row.get(key):
                            texts.append(" ".join(row[key]) if isinstance(row[key], list) else str(row[key]))
    if cfg.tasks_dir.is_dir():
        for path in sorted(cfg.tasks_dir.glob("*.json")):
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise StageError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
            for r in records if isinstance(records, list) else []:
                if isinstance(r, dict):
                    texts.append(str(r.get("question", "")).replace(USER_TOKEN, " ").replace(ITEM_TOKEN, " "))
                    texts.append(str(r.get("answer", "")))
    return [t for t in texts if t]


def build_tiny_base(cfg: Config) -> Path:
    """Build (once) the tiny LLaMA + BPE tokenizer and return its directory.

    WHY: tests and CI need a real causal LM of the same family as the paper's Vicuna
    that trains in seconds; a tokenizer trained on the dataset's own text keeps the
    vocabulary small (fast LM head) without mapping most words to bytes. Deterministic:
    same corpus + seed gives the same files; written to a temp dir then renamed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = cfg.llm_dir / "tiny_base"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    log.info("building the tiny base model under %s", out)
    texts = _tiny_corpus(cfg)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.llm.tiny_vocab_size,
        special_tokens=TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    hidden = cfg.llm.tiny_hidden_size
    conf = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=cfg.llm.tiny_layers,
        num_attention_heads=cfg.llm.tiny_heads,
        num_key_value_heads=cfg.llm.tiny_heads,
        max_position_embeddings=max(2048, cfg.llm.max_length),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(conf)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny_base.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():  # another process finished first; keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def base_model_path(cfg: Config) -> str:
    """Directory (or hub id) of the base LM; builds the tiny one on demand."""
    name = cfg.llm.base_model
    if name == "tiny":
        return str(build_tiny_base(cfg))
    return model_dir_or_hub_id(
        cfg, name, "llm.base_model",
        "run bash shell/download_data.sh to fetch/convert it, or set llm.base_model to a local "
        "Hugging Face model directory, a hub id such as lmsys/vicuna-7b-v1.3, or 'tiny'",
    )


def add_marker_tokens(model: Any, tokenizer: Any, seed: int = 0) -> None:
    """Add ``<user>``/``<item>`` as special tokens and give them deterministic embeddings.

    New rows are the mean embedding plus small seeded noise: the same in every process
    (so a LoRA adapter saved in one process reloads onto identical base rows in another)
    and distinct for the two markers.
    """
    before = len(tokenizer)
    missing = [t for t in MARKER_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    emb = model.get_input_embeddings()
    if emb.weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if not missing:
        return
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in missing]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            w = layer.weight
            old = w[:before].float()
            mean, std = old.mean(0), old.std(0).mean()
            for tid in new_ids:
                noise = torch.randn(w.shape[1], generator=g) * std * 0.1
                w[tid] = (mean + noise).to(w.dtype)


def load_base(cfg: Config, device: str = "cpu") -> tuple[Any, Any]:
    """Base causal LM + tokenizer with the marker tokens added (no adapters, no projectors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = base_model_path(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.llm.torch_dtype, path))
    except OSError as e:
        raise StageError(f"llm.base_model={cfg.llm.base_model!r}: cannot load a causal LM from {path}: {e}") from None
    add_marker_tokens(model, tokenizer)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


# --------------------------------------------------------------------------- projectors


class Projector(nn.Sequential):
    """Paper eq. 1: recommender space (d_rec) -> LLM embedding space (H)."""

    def __init__(self, d_rec: int, hidden: int) -> None:
        super().__init__(nn.Linear(d_rec, hidden // 2), nn.GELU(), nn.Linear(hidden // 2, hidden))

    def zero_(self) -> "Projector":
        """Make the output exactly zero (untrained baseline; 'injection off' ablation)."""
        with torch.no_grad():
            self[2].weight.zero_()
            self[2].bias.zero_()
        return self


class RecExplainer(nn.Module):
    """Causal LM + user/item projectors + frozen recommender (see module docstring)."""

    #: Trainer passes num_items_in_batch so that gradient accumulation averages per token
    accepts_loss_kwargs = True
    #: "token" (the HF default: every answer token weighs the same, so a 5-title ranking
    #: outweighs a Yes/No answer ~25 to 1) or "record" (each record's mean token loss, then
    #: the mean over records: every task record weighs the same); see train.loss_weighting
    loss_weighting = "token"
    #: give a projector that a micro-batch does not use an exact zero gradient (instead of
    #: none). src.train sets it under DeepSpeed: ZeRO-2 reduces gradients in buckets as their
    #: hooks fire and needs the same parameters to get one on every rank; a rank whose batch
    #: had no <item> while another's had one stopped gloo with "Received data size doesn't
    #: match expected size" (NCCL would hang). DDP copes on its own (find_unused_parameters).
    touch_unused_projectors = False
    main_input_name = "input_ids"

    def __init__(self, lm: nn.Module, tokenizer: Any, rec_encoder: RecEncoder | None, rec_dim: int | None = None):
        super().__init__()
        self.lm = lm
        self.user_token_id, self.item_token_id = marker_ids(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id
        hidden = lm.get_input_embeddings().embedding_dim
        d_rec = rec_encoder.dim if rec_encoder is not None else rec_dim
        if d_rec is None:
            raise ValueError("RecExplainer needs a rec_encoder or rec_dim")
        self.rec_dim = int(d_rec)
        self.user_proj = Projector(self.rec_dim, hidden)
        self.item_proj = Projector(self.rec_dim, hidden)
        # an nn.Module encoder is registered (moves with .to()); any other object is kept aside
        if isinstance(rec_encoder, nn.Module):
            self.rec_encoder = rec_encoder
            for p in rec_encoder.parameters():
                p.requires_grad_(False)
            rec_encoder.eval()
        else:
            self._plain_encoder = rec_encoder

    # ------------------------------------------------------------------ plumbing
    @property
    def encoder(self) -> RecEncoder | None:
        enc = self._modules.get("rec_encoder")
        return enc if enc is not None else self.__dict__.get("_plain_encoder")

    @property
    def config(self) -> Any:
        return self.lm.config

    @property
    def device(self) -> torch.device:
        return self.user_proj[0].weight.device

    def train(self, mode: bool = True) -> "RecExplainer":
        super().train(mode)
        if isinstance(self.encoder, nn.Module):
            self.encoder.eval()  # the recommender never gets dropout
        return self

    def causal_lm(self) -> Any:
        """The HF *ForCausalLM (with LoRA layers injected when peft wraps it)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Called by Trainer (train.gradient_checkpointing); non-reentrant so that LoRA
        gets gradients even when no input embedding requires grad (batches without markers)."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        self.causal_lm().activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )

    def activation_checkpointing_disable(self) -> None:
        self.causal_lm().activation_checkpointing_disable()

    def _encoder_device(self) -> torch.device:
        enc = self.encoder
        if isinstance(enc, nn.Module):
            for p in enc.parameters():
                return p.device
        return torch.device(getattr(enc, "device", "cpu"))

    # ------------------------------------------------------------------ injection
    def _inject(
        self, embeds: torch.Tensor, marker: torch.Tensor, vectors: torch.Tensor | None, what: str
    ) -> torch.Tensor:
        """Add one projected vector to each marker row (row-major order), in one write."""
        n_markers = int(marker.sum())
        n_vectors = 0 if vectors is None else vectors.shape[0]
        if n_markers != n_vectors:
            raise StageError(
                f"{what}: the batch has {n_markers} marker token(s) but {n_vectors} encoder input(s); "
                "build batches with src.chat.collate_for_generation / src.data.TaskCollator"
            )
        if n_markers == 0:
            return embeds
        mask = marker.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, embeds[marker] + vectors.to(embeds.dtype))

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        user_histories: torch.Tensor | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with projected recommender vectors added at the markers."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        user_mask = input_ids == self.user_token_id
        item_mask = input_ids == self.item_token_id
        needs = (user_mask.any() and user_histories is not None and user_histories.numel()) or (
            item_mask.any() and item_ids is not None and item_ids.numel()
        )
        if needs and self.encoder is None:
            raise StageError("the batch has <user>/<item> markers but no recommender encoder was loaded")
        user_vecs = item_vecs = None
        proj_dtype = self.user_proj[0].weight.dtype
        if user_histories is not None and user_histories.shape[0] > 0 and self.encoder is not None:
            with torch.no_grad():
                u = self.encoder.encode_users(user_histories.to(self._encoder_device()))
            user_vecs = self.user_proj(u.detach().to(self.device, proj_dtype))
        if item_ids is not None and item_ids.shape[0] > 0 and self.encoder is not None:
            with torch.no_grad():
                i = self.encoder.encode_items(item_ids.to(self._encoder_device()))
            item_vecs = self.item_proj(i.detach().to(self.device, proj_dtype))
        embeds = self._inject(embeds, user_mask, user_vecs, USER_TOKEN)
        embeds = self._inject(embeds, item_mask, item_vecs, ITEM_TOKEN)
        if self.touch_unused_projectors and torch.is_grad_enabled():
            for proj, vecs in ((self.user_proj, user_vecs), (self.item_proj, item_vecs)):
                params = [p for p in proj.parameters() if p.requires_grad] if vecs is None else []
                if params:
                    embeds = embeds + 0.0 * sum(p.reshape(-1)[0] for p in params).to(embeds.dtype)
        return embeds

    # ------------------------------------------------------------------ forward
    def _uses_plain_head(self) -> bool:
        """The gathered-head loss is exact only when logits = lm_head(hidden)."""
        c = self.causal_lm().config
        return not (getattr(c, "final_logit_softcapping", None) or getattr(c, "logit_scale", None))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        user_histories: torch.Tensor | None = None,
        item_ids: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        full_logits: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Loss at answer positions (labels given) or full logits (no labels / full_logits).

        WHY the gathered head: the LM head over a 49k vocabulary at every prompt position
        costs more than the whole 135M body on CPU, and only the answer positions carry
        loss. We run the body, pick the hidden states whose *next* label is not -100 and
        apply the head there; `full_logits=True` gives the textbook loss for checking.
        """
        from transformers.modeling_outputs import CausalLMOutputWithPast

        embeds = self.embed_inputs(input_ids, user_histories, item_ids)
        if labels is None or full_logits or not self._uses_plain_head():
            out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
            loss = None
            if labels is not None:
                logits = out.logits[:, :-1].float()
                tgt = labels[:, 1:]
                keep = tgt != -100
                per_token = F.cross_entropy(logits[keep], tgt[keep], reduction="none")
                loss = self._reduce(per_token, keep, tgt, num_items_in_batch)
            return CausalLMOutputWithPast(loss=loss, logits=out.logits)
        lm = self.causal_lm()
        hidden = lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
        tgt = labels[:, 1:]
        keep = tgt != -100
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        per_token = F.cross_entropy(logits, tgt[keep], reduction="none")
        return CausalLMOutputWithPast(loss=self._reduce(per_token, keep, tgt, num_items_in_batch), logits=None)

    def _reduce(self, per_token: torch.Tensor, keep: torch.Tensor, tgt: torch.Tensor,
                num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
        """Token- or record-weighted mean of the answer-token losses (``loss_weighting``).

        Record weighting returns the micro-batch's mean over records; the Trainer divides it
        by the accumulation steps itself (``accepts_loss_kwargs`` is off in that mode).
        """
        if self.loss_weighting == "record":
            counts = keep.sum(dim=1)
            rows = keep.nonzero(as_tuple=True)[0]
            weights = 1.0 / counts.clamp(min=1).to(per_token.dtype)[rows]
            return (per_token * weights).sum() / (counts > 0).sum().clamp(min=1)
        if num_items_in_batch is not None:
            denom = torch.as_tensor(num_items_in_batch, device=tgt.device).clamp(min=1)
        else:
            denom = keep.sum().clamp(min=1)
        return per_token.sum() / denom

    def set_loss_weighting(self, mode: str) -> None:
        """Switch the loss reduction before the Trainer is built (it reads accepts_loss_kwargs once)."""
        if mode not in ("token", "record"):
            raise ValueError(f"train.loss_weighting must be 'token' or 'record', got {mode!r}")
        self.loss_weighting = mode
        self.accepts_loss_kwargs = mode == "token"

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        user_histories: torch.Tensor | None = None,
        item_ids: torch.Tensor | None = None,
        **gen_kwargs: Any,
    ) -> torch.Tensor:
        """HF generate over injected embeddings; returns prompt ids + new ids (like HF).

        Passing input_ids together with inputs_embeds makes HF use the embeddings for the
        prompt (first step) and the ids for everything after, with the KV cache on.
        """
        dev = self.device
        input_ids = input_ids.to(dev)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(dev)
        embeds = self.embed_inputs(
            input_ids,
            None if user_histories is None else user_histories.to(dev),
            None if item_ids is None else item_ids.to(dev),
        )
        suppress = sorted(set(gen_kwargs.pop("suppress_tokens", None) or []) | {self.user_token_id, self.item_token_id})
        gen_kwargs.setdefault("pad_token_id", self.pad_token_id)
        gen_kwargs.setdefault("use_cache", True)
        gc = gen_kwargs.get("generation_config")
        beams = int(gen_kwargs.get("num_beams") or getattr(gc, "num_beams", 1) or 1)
        last_is_marker = bool(((input_ids[:, -1] == self.user_token_id) | (input_ids[:, -1] == self.item_token_id)).any())
        if beams > 1 and input_ids.shape[1] > 1 and not last_is_marker:
            # WHY: HF beam search copies every prompt num_beams times before the prefill, so
            # 5 beams cost 5 prefills of the same tokens; prefill once, copy the KV cache.
            mask = attention_mask
            pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            out = self.lm(inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                          use_cache=True)
            cache = out.past_key_values
            cache.batch_repeat_interleave(beams)
            return self.lm.generate(
                input_ids=input_ids, attention_mask=mask, past_key_values=cache, suppress_tokens=suppress, **gen_kwargs
            )
        return self.lm.generate(
            input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, suppress_tokens=suppress, **gen_kwargs
        )

    # ------------------------------------------------------------------ state
    def projector_state(self) -> dict[str, Any]:
        return {
            "user_proj": {k: v.detach().cpu() for k, v in self.user_proj.state_dict().items()},
            "item_proj": {k: v.detach().cpu() for k, v in self.item_proj.state_dict().items()},
            "rec_dim": self.rec_dim,
            "hidden_size": self.lm.get_input_embeddings().embedding_dim,
        }

    def load_projector_state(self, state: dict[str, Any], where: str = "projectors") -> None:
        if state.get("rec_dim") != self.rec_dim:
            raise StageError(
                f"{where}: projectors were trained for a {state.get('rec_dim')}-dim recommender, "
                f"the loaded recommender has dim {self.rec_dim}"
            )
        self.user_proj.load_state_dict(state["user_proj"])
        self.item_proj.load_state_dict(state["item_proj"])


# --------------------------------------------------------------------------- LoRA / saving / loading


def embedding_modules(lm: nn.Module) -> tuple[set[str], bool]:
    """Names (last component, e.g. embed_tokens / lm_head) of the LM's input and output
    embedding modules, and whether the two share one weight (tie_word_embeddings)."""
    inp, out = lm.get_input_embeddings(), lm.get_output_embeddings()
    names = {n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if n and (m is inp or (out is not None and m is out))}
    tied = out is not None and getattr(out, "weight", None) is not None and out.weight is inp.weight
    return names, tied


def apply_lora(lm: nn.Module, cfg: Config) -> nn.Module:
    """Wrap the LM with a peft LoRA adapter (base weights frozen) per cfg.llm.lora.

    ``llm.lora.modules_to_save`` (the original v1: embed_tokens and lm_head) makes peft
    train a full copy of those modules beside the frozen originals; the copies, new
    ``<user>``/``<item>`` rows included, are saved in the adapter. Tied embeddings (SmolLM2,
    the tiny LLaMA; not Vicuna): when the LM's input and output embeddings share one weight
    and either of them is listed, peft's ``ensure_weight_tying`` keeps them tied, i.e. ONE
    trained matrix serves as both embedding and LM head, as in the base model, so a merged
    model is again a valid tied checkpoint. Untied LMs get two independent trained copies,
    which is what the original trained on Vicuna.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lc = cfg.llm.lora
    to_save = list(lc.modules_to_save)
    emb_names, tied = embedding_modules(lm)
    pc = PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        modules_to_save=to_save or None,
        ensure_weight_tying=bool(tied and emb_names & set(to_save)),
    )
    try:
        return get_peft_model(lm, pc)
    except ValueError as e:
        raise ConfigError(f"llm.lora: {e}") from None


def build_model(cfg: Config, rec_encoder: RecEncoder | None, device: str = "cpu") -> tuple[RecExplainer, Any]:
    """A trainable RecExplainer: base LM (+LoRA unless disabled) and fresh projectors."""
    lm, tokenizer = load_base(cfg)
    if cfg.llm.lora.enabled:
        lm = apply_lora(lm, cfg)
    gen = torch.random.fork_rng()
    with gen:  # projector init does not depend on what ran before
        torch.manual_seed(cfg.train.seed)
        model = RecExplainer(lm, tokenizer, rec_encoder, rec_dim=cfg.recmodel.hidden_size)
    for p in list(model.user_proj.parameters()) + list(model.item_proj.parameters()):
        p.requires_grad_(True)
    return model.to(device), tokenizer


def save_trained(model: RecExplainer, tokenizer: Any, out_dir: str | Path) -> None:
    """Write adapter/ (LoRA) or model/ (full weights), projectors.pt and tokenizer/."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model.lm, "peft_config")
    sub = out / ("adapter" if is_peft else "model")
    tmp = Path(tempfile.mkdtemp(prefix=f".{sub.name}.", dir=out))
    if is_peft:
        # the frozen base embedding (resized rows included) is re-created deterministically by
        # load_base, so the adapter does not carry a copy of it; the *trained* copies of
        # llm.lora.modules_to_save are part of the adapter's own state and are always saved
        model.lm.save_pretrained(tmp, save_embedding_layers=False)
        _check_saved_modules(model.lm, tmp)
    else:
        model.lm.save_pretrained(tmp)
    if sub.exists():
        shutil.rmtree(sub)
    os.replace(tmp, sub)
    tokenizer.save_pretrained(out / "tokenizer")
    tmp_file = out / f".{PROJECTORS_FILE}.tmp"
    torch.save(model.projector_state(), tmp_file)
    os.replace(tmp_file, out / PROJECTORS_FILE)


def saved_model_problem(out_dir: str | Path) -> str | None:
    """The first missing or damaged file of the layout :func:`save_trained` writes (None = complete).

    Checks adapter/ (config + safetensors) or model/ (config + every weight shard) and
    projectors.pt at header level (:func:`core.utils.weight_file_problem`). WHY: a kill or a
    full disk mid-save leaves a file that only fails deep inside peft/torch with a raw
    error; this names the file first. The message starts with the file's path.
    """
    out = Path(out_dir)
    adapter, full = out / "adapter", out / "model"
    if adapter.is_dir():
        files = [adapter / "adapter_config.json", adapter / "adapter_model.safetensors"]
    elif full.is_dir():
        files = [full / "config.json"]
        index = full / "model.safetensors.index.json"
        if index.is_file():
            problem = weight_file_problem(index)
            if problem:
                return f"{index}: {problem}"
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
            files += [full / s for s in shards]
        else:
            weights = sorted(full.glob("*.safetensors")) or sorted(full.glob("pytorch_model*.bin"))
            files += weights or [full / "model.safetensors"]
    else:
        return f"{out}: neither adapter/ nor model/ (not written by src.train, or cut off before its weights)"
    for f in [*files, out / PROJECTORS_FILE]:
        problem = weight_file_problem(f)
        if problem:
            return f"{f}: {problem}"
    return None


def _check_saved_modules(lm: Any, adapter_dir: Path) -> None:
    """Every module of the adapter's modules_to_save has weights in the saved adapter."""
    names: set[str] = set()
    for pc in lm.peft_config.values():
        names |= {str(n).rsplit(".", 1)[-1] for n in (pc.modules_to_save or [])}
    if not names:
        return
    from safetensors import safe_open

    f = adapter_dir / "adapter_model.safetensors"
    with safe_open(str(f), framework="pt") as st:
        keys = list(st.keys())
    missing = sorted(n for n in names if not any(f".{n}." in k for k in keys))
    if missing:
        raise StageError(f"{f}: the adapter holds no weights for llm.lora.modules_to_save {missing}")


def _load_encoder(cfg: Config, device: str, required: bool) -> RecEncoder | None:
    try:
        from recmodel.encoder import load_rec_encoder
    except ImportError as e:
        if required:
            raise StageError(f"cannot import recmodel.encoder.load_rec_encoder: {e}") from None
        return None
    try:
        return load_rec_encoder(cfg, device=device)
    except StageError:
        if required:
            raise
        log.warning("no trained recommender found; markers get no injected vectors")
        return None


def load_trained_lm(
    cfg: Config, task_type: str, merged: bool = False, model_dir: str | Path | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """The trained LM (peft-wrapped for LoRA), its tokenizer and the projector state.

    No recommender is needed, which is what src.merge uses. `merged=True` reads the
    plain model written by src.merge (cfg.llm_dir/<task_type>/merged/). `model_dir`
    replaces cfg.llm_dir/<task_type>/ (e.g. a Figure 7 variant of src.ablation).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if task_type not in TASK_TYPES:
        raise ConfigError(f"task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    out = Path(model_dir) if model_dir else cfg.llm_dir / task_type
    if merged:
        out = out / "merged"
    meta = read_json(out / META_FILE, what=f"trained {task_type} model (meta.json)")
    if not meta.get("done"):
        raise StageError(f"{out}: training of {task_type} did not finish (meta.json has no done=true); re-run src.train")
    rerun = (f"re-run python -m src.merge --task_type {task_type} --force" if merged
             else f"re-run training with --force (python -m src.train --task_type {task_type} --force)")
    path = out / PROJECTORS_FILE
    if not path.is_file():
        raise StageError(f"missing {path} (written by python -m src.train); {rerun}")
    problem = saved_model_problem(out)
    if problem:
        raise StageError(f"{problem}: the saved {task_type} model is damaged or incomplete; {rerun}")
    # header checks pass but the bytes may still be bad (flipped, or from another base model)
    tokenizer = _load_saved(out / "tokenizer", rerun, AutoTokenizer.from_pretrained, out / "tokenizer")
    if meta.get("lora") and not merged:
        from peft import PeftModel

        base, _ = load_base(cfg)
        if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
            raise StageError(f"{out}: saved tokenizer ({len(tokenizer)} tokens) does not match the base model")
        lm = _load_saved(out / "adapter" / "adapter_model.safetensors", rerun,
                         PeftModel.from_pretrained, base, out / "adapter")
    else:
        lm = _load_saved(out / "model", rerun, AutoModelForCausalLM.from_pretrained, out / "model",
                         dtype=_dtype(cfg.llm.torch_dtype, str(out / "model")))
    state = _load_saved(path, rerun, torch.load, path, map_location="cpu", weights_only=True)
    return lm, tokenizer, state


def _load_saved(where: Path, rerun: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a failure is one StageError naming `where` and how to rebuild it.

    WHY: a damaged file otherwise surfaces as a raw SafetensorError / UnpicklingError
    traceback from deep inside peft or torch that names neither the file nor the fix.
    """
    try:
        return fn(*args, **kwargs)
    except (StageError, ConfigError):
        raise
    except Exception as e:  # SafetensorError, UnpicklingError, RuntimeError, OSError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StageError(f"{where}: cannot load ({type(e).__name__}: {first}); if the file is damaged, {rerun}") from None


def load_trained(
    cfg: Config,
    task_type: str,
    device: str = "cpu",
    rec_encoder: RecEncoder | None = None,
    merged: bool = False,
    model_dir: str | Path | None = None,
) -> tuple[RecExplainer, Any]:
    """Reload a trained model from cfg.llm_dir/<task_type>/ (or the base model for 'none').

    The result is in eval mode on `device`. `rec_encoder` overrides the recommender that
    is otherwise loaded with recmodel.encoder.load_rec_encoder(cfg, device). `merged`
    loads the LoRA-merged copy written by src.merge instead of base + adapter; `model_dir`
    replaces cfg.llm_dir/<task_type>/ (see :func:`load_trained_lm`).
    """
    if task_type not in LOADABLE_TASK_TYPES:
        raise ConfigError(f"task_type must be one of {', '.join(LOADABLE_TASK_TYPES)}, got {task_type!r}")
    if task_type == "none":
        lm, tokenizer = load_base(cfg)
        enc = rec_encoder if rec_encoder is not None else _load_encoder(cfg, device, required=False)
        model = RecExplainer(lm, tokenizer, enc, rec_dim=cfg.recmodel.hidden_size)
        model.user_proj.zero_()
        model.item_proj.zero_()
        return model.to(device).eval(), tokenizer
    lm, tokenizer, state = load_trained_lm(cfg, task_type, merged=merged, model_dir=model_dir)
    enc = rec_encoder if rec_encoder is not None else _load_encoder(cfg, device, required=True)
    model = RecExplainer(lm, tokenizer, enc, rec_dim=state.get("rec_dim"))
    where = Path(model_dir) if model_dir else cfg.llm_dir / task_type
    model.load_projector_state(state, where=str(where / PROJECTORS_FILE))
    return model.to(device).eval(), tokenizer
