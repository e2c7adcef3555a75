"""src.infer_alignment end to end on the tiny profile: outputs, resume, skip/force, ICL, API, errors."""

import json

import pytest

import src.infer_alignment as ia
from core.registry import eval_paths as output_paths
from src.infer_alignment import attach_icl_examples, evaluate, load_eval_records, main
from core.utils import JsonlAppender, StageError, read_jsonl
from tests.fixtures_eval import TITLES, load_tiny_explainer, setup_eval_root
from tests.fixtures_explan import FakeOpenAI, clear_api_env


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_tiny_explainer(setup_eval_root(tmp_path_factory.mktemp("model")))


def test_uid2next_writes_rows_and_metrics_with_constrained_beside(tmp_path, loaded):
    cfg = setup_eval_root(tmp_path)
    m = evaluate(cfg, "intention", "uid2next", loaded=loaded)
    paths = output_paths(cfg, "intention", "uid2next", "valid")
    rows = read_jsonl(paths["rows"])
    crows = read_jsonl(paths["constrained_rows"])
    assert len(rows) == len(crows) == m["n"] == 12
    assert all(len(r["generations"]) == cfg.eval.num_beams for r in rows)
    assert all(g in TITLES for r in crows for g in r["generations"])
    on_disk = json.loads(paths["metrics"].read_text())
    assert on_disk["hr@5"] == m["hr@5"] and "ndcg@5" in on_disk
    assert set(on_disk["constrained"]) == {"hr@5", "ndcg@5", "n", "ci95"}
    # the recorded metrics are exactly core.metrics applied to the rows on disk
    from core.metrics import compute_metrics
    assert compute_metrics("uid2next", crows)["hr@5"] == pytest.approx(on_disk["constrained"]["hr@5"])


def test_uidiid2rank_constrained_block_ranks_the_candidates_and_modes_are_checked(tmp_path, loaded):
    from core.config import ConfigError
    from core.metrics import split_titles

    cfg = setup_eval_root(tmp_path, "eval.constrained_modes=[uidiid2rank]", "eval.max_new_tokens_list=120")
    free = evaluate(cfg, "intention", "uid2next", loaded=loaded)
    assert "constrained" not in free  # uid2next left out of eval.constrained_modes
    m = evaluate(cfg, "intention", "uidiid2rank", loaded=loaded)
    paths = output_paths(cfg, "intention", "uidiid2rank", "valid")
    crows = {r["id"]: r for r in read_jsonl(paths["constrained_rows"])}
    recs = {r["id"]: r for r in load_eval_records(cfg, "intention", "uidiid2rank", "valid")}
    assert len(crows) == m["constrained"]["n"] == len(recs)
    for rid, row in crows.items():  # every constrained answer is an order of that record's candidates
        assert sorted(split_titles(row["generations"][0])) == sorted(TITLES[i - 1] for i in recs[rid]["candidates"])
    # the untrained model's free answers are not rankings of the candidates: the constraint did the work
    assert m["constrained"]["ndcg@5"] > m["ndcg@5"]
    bad = setup_eval_root(tmp_path / "bad", "eval.constrained_modes=[uidiid2binary]")
    with pytest.raises(ConfigError, match="eval.constrained_modes: 'uidiid2binary'"):
        evaluate(bad, "intention", "uidiid2binary", loaded=loaded)


def test_uidiid2rank_pointwise_block_orders_candidates_by_their_yes_no_margin(tmp_path, loaded):
    from core.metrics import compute_metrics, split_titles
    from data_gen.generate import pointwise_records
    from src.generation import score_yes_no

    cfg = setup_eval_root(tmp_path, "eval.constrained=false", "eval.pointwise_rank=true")
    m = evaluate(cfg, "intention", "uidiid2rank", loaded=loaded)
    paths = output_paths(cfg, "intention", "uidiid2rank", "valid")
    assert "constrained" not in m and not paths["constrained_rows"].exists()
    prows = read_jsonl(paths["pointwise_rows"])
    recs = {r["id"]: r for r in load_eval_records(cfg, "intention", "uidiid2rank", "valid")}
    assert len(prows) == m["pointwise"]["n"] == len(recs) == 12
    assert m["pointwise"]["ndcg@5"] == pytest.approx(compute_metrics("uidiid2rank", prows)["ndcg@5"])
    model, tok = loaded
    for row in prows[:3]:
        rec = recs[row["id"]]
        assert row["candidates"] == rec["candidates"] and len(row["margins"]) == 5
        # the margins are the model's own Yes/No scores of the per-candidate task-3 questions
        qs = pointwise_records(rec, [""] + TITLES, cfg.data_gen.max_hist_len, cfg.seed)
        want = [o["logp_yes"] - o["logp_no"] for o in score_yes_no(model, tok, qs, cfg)]
        assert row["margins"] == pytest.approx(want, abs=1e-3)
        ranked = split_titles(row["generations"][0])
        assert ranked == [TITLES[rec["candidates"][j] - 1] for j in sorted(range(5), key=lambda j: -want[j])]
    # not for the ICL baseline, nor for other modes
    assert "pointwise" not in evaluate(cfg, "none", "uidiid2rank", icl=True, loaded=loaded)
    assert "pointwise" not in evaluate(cfg, "intention", "uid2next", loaded=loaded)


def test_switching_the_pointwise_and_constrained_runs_keeps_the_free_rows(tmp_path, loaded, monkeypatch):
    import src.generation as gen

    cfg = setup_eval_root(tmp_path, "eval.constrained=false", "eval.pointwise_rank=false")
    first = evaluate(cfg, "intention", "uidiid2rank", loaded=loaded)
    other = evaluate(cfg, "intention", "uid2next", loaded=loaded)
    assert "pointwise" not in first and "constrained" not in first

    def no_generation(*a, **k):
        raise AssertionError("the free rows should have been reused")

    with monkeypatch.context() as mp:
        mp.setattr(gen, "generate_texts", no_generation)
        on = setup_eval_root(tmp_path, "eval.constrained=false", "eval.pointwise_rank=true")
        m = evaluate(on, "intention", "uidiid2rank", loaded=loaded)  # no stale error: the block is added
        assert m["ndcg@5"] == first["ndcg@5"] and m["pointwise"]["n"] == 12
        # uid2next does not depend on eval.pointwise_rank: it skips without loading any model
        assert evaluate(on, "intention", "uid2next", loaded=None) == json.loads(
            output_paths(cfg, "intention", "uid2next", "valid")["metrics"].read_text()) and other["n"] == 12
    both = evaluate(setup_eval_root(tmp_path, "eval.constrained=true", "eval.pointwise_rank=true"),
                    "intention", "uidiid2rank", loaded=loaded)
    assert both["constrained"]["n"] == 12 and both["pointwise"] == m["pointwise"]
    off = evaluate(setup_eval_root(tmp_path, "eval.constrained=false", "eval.pointwise_rank=false"),
                   "intention", "uidiid2rank", loaded=loaded)
    assert "pointwise" not in off and "constrained" not in off and off["ndcg@5"] == first["ndcg@5"]


def test_resume_after_interruption_gives_the_same_metrics(tmp_path, loaded, monkeypatch):
    ref_cfg = setup_eval_root(tmp_path / "ref")
    ref = evaluate(ref_cfg, "intention", "uidiid2rank", loaded=loaded)
    ref_bin = evaluate(ref_cfg, "intention", "uidiid2binary", loaded=loaded)

    cfg = setup_eval_root(tmp_path / "cut")
    real_append = JsonlAppender.append
    calls = {"n": 0}

    def failing_append(self, row):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-batch (batch_size 3): rows 1-4 are on disk
            raise KeyboardInterrupt
        real_append(self, row)

    monkeypatch.setattr(JsonlAppender, "append", failing_append)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, "intention", "uidiid2rank", loaded=loaded)
    monkeypatch.setattr(JsonlAppender, "append", real_append)
    paths = output_paths(cfg, "intention", "uidiid2rank", "valid")
    assert not paths["metrics"].exists()
    assert len(read_jsonl(paths["rows"])) == 4
    with open(paths["rows"], "a") as f:  # a torn last line, as a kill during a write leaves
        f.write('{"id": "valid-emb-rank-')
    resumed = evaluate(cfg, "intention", "uidiid2rank", loaded=loaded)
    assert resumed["ndcg@5"] == pytest.approx(ref["ndcg@5"]) and resumed["n"] == ref["n"]
    rows = read_jsonl(paths["rows"])
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    ref_rows = {r["id"]: r["generations"] for r in read_jsonl(output_paths(ref_cfg, "intention", "uidiid2rank", "valid")["rows"])}
    assert {r["id"]: r["generations"] for r in rows} == ref_rows
    assert evaluate(cfg, "intention", "uidiid2binary", loaded=loaded)["acc"] == ref_bin["acc"]


def test_existing_metrics_are_skipped_unless_forced(tmp_path, loaded, monkeypatch):
    cfg = setup_eval_root(tmp_path)
    first = evaluate(cfg, "both", "iid2title", loaded=loaded)
    called = {"n": 0}
    real = ia.run_local

    def counting(*a, **k):
        called["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(ia, "run_local", counting)
    assert evaluate(cfg, "both", "iid2title", loaded=loaded) == first
    assert called["n"] == 0
    again = evaluate(cfg, "both", "iid2title", loaded=loaded, force=True)
    assert called["n"] == 1 and again["acc"] == first["acc"]
    # a changed measuring setting stops the reuse, named; a changed sample count re-measures
    # from the rows there are; batch size does not count (issue 13)
    import copy

    other = copy.deepcopy(cfg)
    other.eval.max_new_tokens += 1
    with pytest.raises(StageError, match=r"eval\.max_new_tokens: \d+ -> \d+.*--force"):
        evaluate(other, "both", "iid2title", loaded=loaded)
    faster = copy.deepcopy(cfg)
    faster.eval.batch_size += 3
    assert evaluate(faster, "both", "iid2title", loaded=loaded) == again and called["n"] == 1
    fewer = copy.deepcopy(cfg)
    fewer.eval.max_samples_per_mode = {"iid2title": 2}
    assert evaluate(fewer, "both", "iid2title", loaded=loaded)["n"] == 2 and called["n"] == 2
    # a retrained model (its stamp changes) makes its cells stale
    stamp = cfg.llm_dir / "both" / "stamp.json"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text('{"settings": {"train.lr": 1}}', encoding="utf-8")
    with pytest.raises(StageError, match=r"input llm/both/stamp.json changed"):
        evaluate(fewer, "both", "iid2title", loaded=loaded)


def test_icl_examples_are_seeded_same_task_and_recorded(tmp_path, loaded):
    cfg = setup_eval_root(tmp_path)
    recs = load_eval_records(cfg, "none", "uidiid2binary", "valid")
    a = attach_icl_examples(cfg, recs, "uidiid2binary")
    b = attach_icl_examples(cfg, recs, "uidiid2binary")
    assert [r["icl"] for r in a] == [r["icl"] for r in b]
    assert all(len(r["icl"]) == 2 and all(e["id"].startswith("train-text-bin-") for e in r["icl"]) for r in a)
    assert len({tuple(e["id"] for e in r["icl"]) for r in a}) > 1  # drawn per record
    m = evaluate(cfg, "none", "uidiid2binary", icl=True, loaded=loaded)
    assert m["method"] == "none_icl"
    rows = read_jsonl(output_paths(cfg, "none_icl", "uidiid2binary", "valid")["rows"])
    assert {r["id"]: r["icl_ids"] for r in rows} == {r["id"]: [e["id"] for e in r["icl"]] for r in a}


def test_gpt4_icl_through_the_api_client(tmp_path, monkeypatch):
    clear_api_env(monkeypatch)
    cfg = setup_eval_root(tmp_path)
    assert evaluate(cfg, "gpt4", "uidiid2binary", icl=True) is None  # no endpoint: skipped
    assert not (cfg.eval_dir / "gpt4_icl").exists()

    def answer(body, idx):
        return 200, "Yes, because the user liked similar movies."

    with FakeOpenAI(answer) as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ENGINE", "gpt-4")
        m = evaluate(cfg, "gpt4", "uidiid2binary", icl=True)
        assert len(srv.requests) == 12
        msgs = srv.requests[0]["messages"]
        assert [x["role"] for x in msgs] == ["user", "assistant", "user", "assistant", "user"]
        assert msgs[1]["content"] in ("Yes", "No")
    assert m["method"] == "gpt4_icl" and m["acc"] == pytest.approx(0.5)  # half the labels are Yes


def test_gpt4_icl_uid2next_asks_for_5_ranked_titles_and_scores_the_list(tmp_path, monkeypatch):
    """Paper 3.1.1: HR@5 / NDCG@5 of GPT4-ICL on task 1 need a ranked list of 5, not one guess."""
    import dataclasses
    import math

    clear_api_env(monkeypatch)
    cfg = setup_eval_root(tmp_path)
    recs = load_eval_records(cfg, "gpt4", "uid2next", "valid")
    answer_of = {r["question"]: r["answer"] for r in recs}
    fillers = [t for t in TITLES if t not in answer_of.values()][:5]
    # record j: the target at rank j % 6 (rank 5 = not listed), in a different list format each time
    formats = [
        lambda ts: "Here are my guesses:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(ts, 1)),
        lambda ts: "; ".join(ts),
        lambda ts: "\n".join(f"- **{t}**" for t in ts),
        lambda ts: " ".join(f"{i}) {t}" for i, t in enumerate(ts, 1)),
    ]

    def reply(body, idx):
        question = body["messages"][-1]["content"]
        target = next(a for q, a in answer_of.items() if question.startswith(q))
        j = sorted(answer_of).index(next(q for q in answer_of if question.startswith(q)))
        ts = list(fillers[:5])
        if j % 6 < 5:
            ts[j % 6] = target.upper() if j % 2 else target  # exact match after strip + lower case
        return 200, formats[j % len(formats)](ts)

    with FakeOpenAI(reply) as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ENGINE", "gpt-4")
        m = evaluate(cfg, "gpt4", "uid2next", icl=True)
        msgs = srv.requests[0]["messages"]
        instr = "Answer with the 5 most likely item titles, most likely first"
        assert [x["role"] for x in msgs] == ["user", "assistant"] * 2 + ["user"]
        assert instr in msgs[-1]["content"] and not any(instr in x["content"] for x in msgs[:-1])
        ranks = [sorted(answer_of).index(q) % 6 for q in answer_of]
        hr = sum(r < 5 for r in ranks) / len(ranks)
        ndcg = sum(1 / math.log2(r + 2) for r in ranks if r < 5) / len(ranks)
        assert m["n"] == 12 and m["hr@5"] == pytest.approx(hr) and m["ndcg@5"] == pytest.approx(ndcg)
        assert m["ndcg@5"] < m["hr@5"]  # a ranked list, not one guess
        rows = read_jsonl(output_paths(cfg, "gpt4_icl", "uid2next", "valid")["rows"])
        assert all(len(r["generations"]) == 5 and r["api_k"] == 5 for r in rows)
        assert m["settings"]["api_uid2next_k"] == 5
        # the old one-guess protocol is a key away; its rows and metrics are not mixed with these
        n_before = len(srv.requests)
        one_guess = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, api_uid2next_k=1))
        one = evaluate(one_guess, "gpt4", "uid2next", icl=True)
        assert len(srv.requests) == n_before + 12
        assert instr not in srv.requests[-1]["messages"][-1]["content"]
        assert one["hr@5"] == pytest.approx(sum(r == 0 for r in ranks) / len(ranks))
        assert one["settings"]["api_uid2next_k"] == 1


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cfg = setup_eval_root(tmp_path)
    base = ["--config", "configs/tiny.yaml", "--set", f"paths.root={cfg.root}"]
    assert main(base + ["--task_type", "none", "--inference_mode", "uid2hist"]) == 2
    err = capsys.readouterr().err
    assert "no records of type 'uid2hist'" in err and "behaviour_valid.json" in err
    (cfg.tasks_dir / "both_valid.json").write_text('[{"id": "x", "type": "uid2next"}]')
    assert main(base + ["--task_type", "both", "--inference_mode", "uid2next"]) == 2
    assert "lacks field(s) question, answer" in capsys.readouterr().err
    assert main(base + ["--task_type", "both", "--inference_mode", "uid2next", "--split", "test"]) == 2
    assert "both_test.json" in capsys.readouterr().err
    assert not list(cfg.eval_dir.glob("**/*.metrics.json"))  # no partial outputs


def test_sample_caps_per_mode(tmp_path):
    cfg = setup_eval_root(tmp_path, "eval.max_samples=5", "eval.max_samples_per_mode={uid2next: 2, uid2hist: 0}")
    assert len(load_eval_records(cfg, "intention", "uid2next", "valid")) == 2
    assert len(load_eval_records(cfg, "intention", "uidiid2rank", "valid")) == 5
    assert len(load_eval_records(cfg, "intention", "uid2hist", "valid")) == 12  # 0 = all
    ids = [r["id"] for r in load_eval_records(cfg, "intention", "uid2next", "valid")]
    # a seeded random draw (stable across calls, in file order), not the first records
    assert ids == [r["id"] for r in load_eval_records(cfg, "intention", "uid2next", "valid")]
    assert ids == sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1]))
    other = setup_eval_root(tmp_path / "seed", "eval.max_samples_per_mode={uid2next: 2}", "eval.sample_seed=7")
    draws = {tuple(r["id"] for r in load_eval_records(c, "intention", "uid2next", "valid")) for c in (cfg, other)}
    assert len(draws) == 2  # another sample_seed draws another sample
    bad = setup_eval_root(tmp_path / "bad", "eval.max_samples_per_mode={uid2nxt: 2}")
    with pytest.raises(ia.ConfigError, match="uid2nxt"):
        load_eval_records(bad, "intention", "uid2next", "valid")


def test_icl_cap_is_a_subset_of_the_common_sample_and_icl_constrained_is_its_own_switch(tmp_path, loaded):
    cfg = setup_eval_root(tmp_path, "eval.max_samples_per_mode={uidiid2rank: 10}", "eval.icl_max_samples=4",
                          "eval.icl_constrained=false", "eval.constrained_modes=[uidiid2rank]")
    common = [r["id"] for r in load_eval_records(cfg, "none", "uidiid2rank", "valid")]
    icl = [r["id"] for r in load_eval_records(cfg, "none", "uidiid2rank", "valid", icl=True)]
    assert len(common) == 10 and len(icl) == 4 and set(icl) < set(common)  # same records, fewer
    assert icl == [r["id"] for r in load_eval_records(cfg, "none", "uidiid2rank", "valid", icl=True)]  # seeded
    m = evaluate(cfg, "none", "uidiid2rank", icl=True, loaded=loaded)
    assert m["n"] == 4 and "constrained" not in m and m["settings"]["icl_max_samples"] == 4
    plain = evaluate(cfg, "none", "uidiid2rank", loaded=loaded)
    assert plain["n"] == 10 and "constrained" in plain  # the other methods keep theirs
    # the ICL keys are not in a plain method's fingerprint: changing them keeps its cell current
    moved = setup_eval_root(tmp_path, "eval.max_samples_per_mode={uidiid2rank: 10}", "eval.icl_max_samples=0",
                            "eval.icl_constrained=true", "eval.constrained_modes=[uidiid2rank]")
    assert evaluate(moved, "none", "uidiid2rank", loaded=lambda: pytest.fail("a current cell loads no model")) == plain
    # for the ICL method the cap re-measures from its rows (the 4 are reused), with the constrained run
    again = evaluate(moved, "none", "uidiid2rank", icl=True, loaded=loaded)
    assert again["n"] == 10 and again["constrained"]["n"] == 10


def test_several_modes_in_one_process_load_the_model_once(tmp_path, loaded, monkeypatch, capsys):
    cfg = setup_eval_root(tmp_path)
    calls = []
    monkeypatch.setattr(ia, "load_model", lambda c, t: calls.append(t) or loaded)
    base = ["--config", "configs/tiny.yaml", "--set", f"paths.root={cfg.root}", "--task_type", "intention"]
    assert main(base + ["--inference_mode", "uidiid2binary,uid2hist", "--no-constrained"]) == 0
    assert calls == ["intention"]
    for mode in ("uidiid2binary", "uid2hist"):
        assert output_paths(cfg, "intention", mode, "valid")["metrics"].is_file()
    # all present: nothing is loaded
    assert main(base + ["--inference_mode", "uidiid2binary,uid2hist", "--no-constrained"]) == 0
    assert calls == ["intention"]
    for bad, why in (("uid2next,bogus", "unknown inference mode 'bogus'"), ("uid2hist,uid2hist", "named twice")):
        with pytest.raises(SystemExit):
            main(base + ["--inference_mode", bad])
        assert why in capsys.readouterr().err
