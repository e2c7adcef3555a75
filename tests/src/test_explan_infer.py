"""src.infer_explan: the API method against a real HTTP server, the base LLM on the tiny profile,
resumability, aspects, and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from core import registry
from src import infer_explan
from core.utils import StageError, read_jsonl
from tests.fixtures_explan import FakeOpenAI, clear_api_env, tiny_cfg

TITLES = ["", "Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)",
          "Jumanji (1995)", "Se7en (1995)", "Fargo (1996)"]
SEQS = {1: [1, 2, 3, 4, 5], 2: [2, 3, 6, 7, 8], 3: [8, 7, 1, 4, 6], 4: [5, 6, 7, 8, 1, 2]}
INSTR = ("Please give your answer and explain why you make this decision from the perspective of a recommender "
         "model. Your explanation should include the following aspects: summary of patterns and traits from user "
         "purchase history, the consistency or inconsistency between user preferences and the item.")


def _question(hist: list[int], iid: int) -> str:
    shown = "; ".join(TITLES[i] for i in hist)
    return f"The user has the following purchase history: {shown} . Will the user like the item: {TITLES[iid]} ? {INSTR}"


def make_fixture(cfg) -> list[dict]:
    """Canonical data (preprocess format) and explanation prompts (data_gen format)."""
    d = cfg.data_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "sequences.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in SEQS.items()))
    (d / "items.jsonl").write_text("".join(json.dumps({"iid": i, "title": t}) + "\n" for i, t in enumerate(TITLES) if i))
    (d / "dataset.json").write_text(json.dumps({"n_users": 4, "n_items": 8}))
    recs = []
    for k, (uid, seq) in enumerate(SEQS.items()):
        hist = seq[:-1]
        for tag, iid, label, score in (("pos", seq[-1], "Yes", 3.5), ("neg", 3 if 3 not in seq else 1, "No", -1.25)):
            recs.append({"id": f"explan-valid-{k:05d}-{tag}", "type": "explan", "form": "behaviour", "uid": uid,
                         "iid": iid, "history": hist, "candidates": [iid], "iids_in_question": [],
                         "question": _question(hist[-cfg.data_gen.max_hist_len:], iid), "answer": label,
                         "label": label, "score": score})
    cfg.tasks_dir.mkdir(parents=True, exist_ok=True)
    (cfg.tasks_dir / "explan_none_valid.json").write_text(json.dumps(recs))
    with open(cfg.tasks_dir / "explan_chatgpt_valid.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "uid", "iid", "label", "question"])
        for r in recs:
            w.writerow([r["id"], r["uid"], r["iid"], r["label"], r["question"]])
    return recs


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    clear_api_env(monkeypatch)


def _answer(body: dict, n: int):
    q = body["messages"][-1]["content"]
    return 200, ("Yes, the user will like it because of " + q.split("item: ")[1].split(" ?")[0])


def test_chatgpt_method_rows_resume_and_aspect(tmp_path):
    cfg = tiny_cfg(tmp_path, "explain.max_new_tokens=40", "explain.chatgpt_model=gpt-test")
    recs = make_fixture(cfg)
    with FakeOpenAI(_answer) as srv:
        env = {"OPENAI_API_KEY": "sk-secret", "OPENAI_API_BASE": srv.base_url, "ENGINE": "default-engine"}
        path = infer_explan.run(cfg, "chatgpt", "valid", environ=env)
        assert path == cfg.explain_dir / "chatgpt_valid.jsonl"
        rows = read_jsonl(path)
        assert len(rows) == 8 and len(srv.requests) == 8
        assert {r["model"] for r in srv.requests} == {"gpt-test"} and srv.requests[0]["max_tokens"] == 40
        by_id = {r["id"]: r for r in rows}
        r0 = by_id["explan-valid-00000-pos"]
        assert r0["explanation"] == "Yes, the user will like it because of Babe (1995)"
        assert (r0["uid"], r0["iid"], r0["label"], r0["method"], r0["split"]) == (1, 5, "Yes", "chatgpt", "valid")
        assert r0["history"] == [1, 2, 3, 4] and r0["score"] == 3.5  # joined from the JSON by id
        assert r0["history_titles"] == [TITLES[i] for i in [1, 2, 3, 4]] and r0["item_title"] == "Babe (1995)"
        assert "sk-secret" not in path.read_text()

        # resumability: a killed run (torn last line) continues with only the missing rows
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:5]) + lines[5][:20])
        infer_explan.run(cfg, "chatgpt", "valid", environ=env)
        assert len(read_jsonl(path)) == 8
        assert sorted(r["id"] for r in read_jsonl(path)) == sorted(r["id"] for r in recs)
        assert len(srv.requests) == 8  # the 3 missing answers came from the API cache
        # complete file: nothing to do
        infer_explan.run(cfg, "chatgpt", "valid", environ={})

        # controllable explanation: instruction appended, separate file
        apath = infer_explan.run(cfg, "chatgpt", "valid", aspect="movie genres", environ=env)
        assert apath.name == "chatgpt_valid_aspect-movie-genres.jsonl"
        arows = read_jsonl(apath)
        assert len(arows) == 8 and all(r["aspect"] == "movie genres" for r in arows)
        assert all(r["question"].endswith("Please explain your decision from the perspective of movie genres.") for r in arows)
        assert srv.requests[-1]["messages"][-1]["content"].endswith("perspective of movie genres.")
        assert len(srv.requests) == 16


def test_chatgpt_without_endpoint_is_clear(tmp_path):
    cfg = tiny_cfg(tmp_path)
    make_fixture(cfg)
    with pytest.raises(StageError, match="no API endpoint configured"):
        infer_explan.run(cfg, "chatgpt", "valid", environ={})
    assert not (cfg.explain_dir / "chatgpt_valid.jsonl").exists()  # no empty file for later stages


def test_missing_or_bad_prompts(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(StageError, match="explan_both_valid.json"):
        infer_explan.run(cfg, "both", "valid")
    recs = make_fixture(cfg)
    recs[2]["label"] = "maybe"
    (cfg.tasks_dir / "explan_none_valid.json").write_text(json.dumps(recs))
    with pytest.raises(StageError, match="record 2 .*label must be Yes or No"):
        infer_explan.run(cfg, "none", "valid")
    assert infer_explan.main(["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path / 'out'}",
                              "--task_type", "none"]) == 2
    assert registry.aspect_slug("Game Platforms!") == "game-platforms"


@pytest.mark.slow
def test_base_llm_generates_greedy_and_resumes(tmp_path):
    cfg = tiny_cfg(tmp_path, "explain.max_new_tokens=6", "explain.batch_size=3", "explain.max_samples=6")
    make_fixture(cfg)
    path = infer_explan.run(cfg, "none", "valid")
    rows = read_jsonl(path)
    assert len(rows) == 6 and path.name == "none_valid.jsonl"
    assert [r["id"] for r in sorted(rows, key=lambda r: r["id"])] == sorted(r["id"] for r in rows)
    assert all(isinstance(r["explanation"], str) and r["method"] == "none" for r in rows)
    assert {r["id"] for r in rows} == {f"explan-valid-{k:05d}-{t}" for k in range(3) for t in ("neg", "pos")}
    # greedy: a resumed run regenerates exactly what an uninterrupted one wrote
    full = {r["id"]: r["explanation"] for r in rows}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    infer_explan.run(cfg, "none", "valid")
    again = {r["id"]: r["explanation"] for r in read_jsonl(path)}
    assert again == full
    # other decoding settings do not resume into (or skip on) these rows: named, kept (issue 13)
    longer = tiny_cfg(tmp_path, "explain.max_new_tokens=9", "explain.batch_size=3", "explain.max_samples=6")
    with pytest.raises(StageError, match=r"explain\.max_new_tokens: 6 -> 9.*--force"):
        infer_explan.run(longer, "none", "valid")
    assert {r["id"]: r["explanation"] for r in read_jsonl(path)} == full
    infer_explan.run(tiny_cfg(tmp_path, "explain.max_new_tokens=6", "explain.batch_size=2", "explain.max_samples=6"),
                     "none", "valid")  # batch size is not a reason


def test_min_new_tokens_keeps_explanations_from_ending_early(tmp_path, monkeypatch):
    """explain.min_new_tokens (the original: at least 150 of at most 500) holds the end token back."""
    import torch

    from src import generation
    from core.config import ConfigError
    from src.model import load_trained

    new_tokens = []
    real = generation._run_generate

    def spy(model, batch, **kw):
        out = real(model, batch, **kw)
        new_tokens.append(out.shape[1] - batch["input_ids"].shape[1])
        return out

    monkeypatch.setattr(generation, "_run_generate", spy)
    cfg0 = tiny_cfg(tmp_path / "m", "explain.max_new_tokens=6")
    make_fixture(cfg0)
    model, tok = load_trained(cfg0, "none")
    with torch.no_grad():  # tied head: the end token now wins every step
        model.lm.get_input_embeddings().weight[tok.eos_token_id] *= 200
    for n_min in (0, 4):
        cfg = tiny_cfg(tmp_path / str(n_min), "explain.max_new_tokens=6", f"explain.min_new_tokens={n_min}",
                       "explain.max_samples=4", "explain.batch_size=4", "explain.repetition_penalty=1.0",
                       "explain.no_repeat_ngram_size=0")
        make_fixture(cfg)
        infer_explan.run(cfg, "none", "valid", model_and_tokenizer=(model, tok))
    assert new_tokens == [1, 5]  # stops at once; with the minimum: 4 held back, then the end token
    bad = tiny_cfg(tmp_path / "bad", "explain.max_new_tokens=6", "explain.min_new_tokens=7")
    make_fixture(bad)
    with pytest.raises(ConfigError, match="min_new_tokens"):
        infer_explan.run(bad, "none", "valid", model_and_tokenizer=(model, tok))


def test_explanation_kwargs_pass_only_what_differs_from_hf_defaults(tmp_path):
    from core.config import ConfigError
    from src.generation import explanation_kwargs

    plain = tiny_cfg(tmp_path, "explain.min_new_tokens=0", "explain.repetition_penalty=1.0",
                     "explain.no_repeat_ngram_size=0")
    assert explanation_kwargs(plain) == {}  # the paper profiles decode exactly as the original
    cpu = tiny_cfg(tmp_path, "explain.min_new_tokens=3", "explain.repetition_penalty=1.2",
                   "explain.no_repeat_ngram_size=3")
    assert explanation_kwargs(cpu) == {"min_new_tokens": 3, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3}
    with pytest.raises(ConfigError, match="repetition_penalty must be > 0"):
        explanation_kwargs(tiny_cfg(tmp_path, "explain.repetition_penalty=0"))


def test_several_splits_in_one_process_load_the_model_once(tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg(tmp_path, "explain.max_new_tokens=4", "explain.batch_size=4", "explain.max_samples=2")
    recs = make_fixture(cfg)
    (cfg.tasks_dir / "explan_none_train.json").write_text(
        json.dumps([{**r, "id": r["id"].replace("valid", "train")} for r in recs]))
    from src.model import load_trained

    calls = []
    monkeypatch.setattr(infer_explan, "load_model",
                        lambda c, t: calls.append(t) or load_trained(c, t, device="cpu"))
    base = ["--config", "configs/tiny.yaml", "--set", f"paths.root={cfg.root}", "--set", "explain.max_new_tokens=4",
            "--set", "explain.batch_size=4", "--set", "explain.max_samples=2", "--task_type", "none"]
    assert infer_explan.main(base + ["--split", "valid,train"]) == 0
    assert calls == ["none"]
    assert all(len(read_jsonl(cfg.explain_dir / f"none_{s}.jsonl")) == 2 for s in ("valid", "train"))
    assert infer_explan.main(base + ["--split", "valid,train"]) == 0 and calls == ["none"]  # all present
    with pytest.raises(SystemExit):
        infer_explan.main(base + ["--split", "valid,bogus"])
    assert "--split: expected one or more of valid, train, test" in capsys.readouterr().err
