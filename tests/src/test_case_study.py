"""src.case_study / shell/explain.sh: case studies on demand on the tiny profile.

The fixture writes a canonical dataset (tests.fixtures_eval), a real SASRec file
(recmodel.encoder.save_model_file, untrained weights), and "trained" RecExplainer-B/I/H
folders in the layout src.train writes (src.model.save_trained + meta.json), so the case
study goes through the same loaders as every stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from data_gen import templates as T
from src import case_study
from core.config import load_config
from core.utils import StageError
from tests.fixtures_eval import TITLES, write_dataset
from tests.fixtures_llm import one_thread  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[2]
ALIGNED = ("behaviour", "intention", "both")


def _overrides(root: Path) -> list[str]:
    return [f"paths.root={root}", f"paths.raw_dir={root.parent}/raw", "recmodel.hidden_size=16",
            "explain.max_new_tokens=8", "explain.min_new_tokens=3", "seed=7"]


def _argv(root: Path, *extra: str) -> list[str]:
    out = ["--config", "configs/tiny.yaml"]
    for o in _overrides(root):
        out += ["--set", o]
    return out + list(extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):  # noqa: F811
    from recmodel.encoder import load_rec_encoder, save_model_file
    from recmodel.models import ARCH_KEYS, build_model
    from src.model import META_FILE, load_trained, save_trained

    root = tmp_path_factory.mktemp("case") / "out"
    cfg = load_config("configs/tiny.yaml", _overrides(root))
    seqs = write_dataset(cfg)
    rc = dataclasses.asdict(cfg.recmodel)
    arch = {k: rc[k] for k in ARCH_KEYS if k in rc}
    torch.manual_seed(0)
    rec = build_model(arch, len(TITLES))
    save_model_file(cfg.recmodel_dir / "model.pt", arch, len(TITLES), rec.state_dict(), {}, {})
    enc = load_rec_encoder(cfg)
    model, tok = load_trained(cfg, "none", rec_encoder=enc)
    for k, m in enumerate(ALIGNED):
        torch.manual_seed(k)
        with torch.no_grad():
            for p in list(model.user_proj.parameters()) + list(model.item_proj.parameters()):
                p.normal_(0, 0.5)
            # an untrained LLaMA with tied embeddings repeats the prompt's last token ("\n", stripped
            # to ""); larger random layer weights make it write visible (random) text
            for p in model.causal_lm().model.layers.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.3)
        save_trained(model, tok, cfg.llm_dir / m)
        (cfg.llm_dir / m / META_FILE).write_text(json.dumps({"done": True, "lora": False}))
    return cfg, seqs, enc


def _json(capsys, root: Path, *extra: str) -> dict:
    rc = case_study.main(_argv(root, "--json", *extra))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


def _masked(enc, history: list[int]) -> torch.Tensor:
    s = enc.score(torch.tensor([history[-10:]])).float()[0].clone()
    s[0] = -math.inf
    s[torch.tensor(sorted(set(history)))] = -math.inf
    return s


def test_json_schema_and_default_item_is_the_recommender_top1(world, capsys, monkeypatch):
    cfg, seqs, enc = world
    from src import model as model_mod

    calls: list[str] = []
    real = model_mod.load_trained
    monkeypatch.setattr(model_mod, "load_trained", lambda c, t, **kw: calls.append(t) or real(c, t, **kw))
    out = _json(capsys, cfg.root, "--user", "3")
    assert calls == list(case_study.METHODS)  # each model loaded exactly once
    assert set(out) == {"dataset", "config", "aspect", "user", "item", "recommender", "methods"}
    hist = seqs[3][:-1]  # tiny inherits data_gen.eval_split=test: history before the last item
    assert out["user"] == {"uid": 3, "source": "user", "position": "test", "history": hist,
                           "history_titles": [TITLES[i - 1] for i in hist[-cfg.recmodel.max_seq_len:][-5:]]}
    rec = out["recommender"]
    assert set(rec) == {"model", "score", "rank", "n_ranked", "in_history", "label", "top"}
    masked = _masked(enc, hist)
    best = int(masked.argmax())
    assert out["item"] == {"iid": best, "title": TITLES[best - 1], "chosen_by": "recommender top-1"}
    assert rec["rank"] == 1 and rec["label"] == "Yes" and rec["in_history"] is False
    assert rec["n_ranked"] == len(TITLES) - len(set(hist))
    assert [t["iid"] for t in rec["top"]] == masked.argsort(descending=True)[:5].tolist()
    assert all(t["iid"] not in hist for t in rec["top"])
    assert rec["score"] == pytest.approx(float(masked[best]), abs=1e-5)
    assert [m["method"] for m in out["methods"]] == list(case_study.METHODS)
    for m in out["methods"]:
        assert set(m) == {"method", "name", "decision", "p_yes", "p_decision", "logp_yes", "logp_no",
                          "agrees_with_recommender", "binary_question", "question", "explanation"}
        p = math.exp(m["logp_yes"]) / (math.exp(m["logp_yes"]) + math.exp(m["logp_no"]))
        assert m["p_yes"] == pytest.approx(p)
        assert m["decision"] == ("Yes" if m["p_yes"] >= 0.5 else "No")
        assert m["p_decision"] == pytest.approx(max(m["p_yes"], 1 - m["p_yes"]))
        assert m["agrees_with_recommender"] == (m["decision"] == "Yes")
        assert isinstance(m["explanation"], str)
        if m["method"] != "none":
            assert m["explanation"].strip()
    assert [m["name"] for m in out["methods"]][1:] == ["RecExplainer-B", "RecExplainer-I", "RecExplainer-H"]


def test_item_by_id_and_by_title_give_the_same_view_and_the_pipeline_prompts(world, capsys):
    cfg, seqs, enc = world
    hist = seqs[5][:-1]
    masked = _masked(enc, hist)
    iid = int(masked.argsort(descending=True)[7])  # some unseen item ranked 8th
    by_id = _json(capsys, cfg.root, "--user", "5", "--item", str(iid), "--methods", "none,behaviour,intention,both")
    by_title = _json(capsys, cfg.root, "--user", "5", "--item", TITLES[iid - 1].upper())
    assert by_id["item"] == {"iid": iid, "title": TITLES[iid - 1], "chosen_by": "argument"}
    assert by_id["recommender"]["rank"] == 8
    assert by_id["recommender"]["score"] == pytest.approx(float(masked[iid]), abs=1e-5)
    assert by_title["item"]["iid"] == iid and by_title["methods"] == by_id["methods"]  # deterministic
    shown = "; ".join(TITLES[i - 1] for i in hist[-5:])
    title = TITLES[iid - 1]
    q = {m["method"]: m for m in by_id["methods"]}
    assert q["none"]["binary_question"] == T.UIDIID2BINARY[0].format(history=shown, item=title)
    assert q["behaviour"]["question"] == T.EXPLANATION.format(history=shown, item=title)
    assert q["intention"]["question"] == T.EXPLANATION.format(history="<user>", item="<item>")
    assert q["both"]["binary_question"] == T.UIDIID2BINARY[0].format(history=f"<user> {shown}", item=f"<item> {title}")


def test_history_typed_in_by_hand(world, capsys):
    cfg, _, enc = world
    out = _json(capsys, cfg.root, "--history", f"{TITLES[2]}; 5 ;movie 9 (1959)", "--methods", "intention")
    assert out["user"]["uid"] is None and out["user"]["source"] == "history"
    assert out["user"]["history"] == [3, 5, 9]
    masked = _masked(enc, [3, 5, 9])
    assert out["item"]["iid"] == int(masked.argmax())
    assert not {t["iid"] for t in out["recommender"]["top"]} & {3, 5, 9}
    assert [m["method"] for m in out["methods"]] == ["intention"]


def test_aspect_and_methods_subset(world, capsys):
    cfg, _, _ = world
    out = _json(capsys, cfg.root, "--user", "2", "--item", "4", "--methods", "both,none", "--aspect", " genres ")
    assert out["aspect"] == "genres"
    assert [m["method"] for m in out["methods"]] == ["both", "none"]
    for m in out["methods"]:
        assert m["question"].endswith("Please explain your decision from the perspective of genres.")
        assert "perspective of genres" not in m["binary_question"]


def test_text_output_streams_only_when_asked(world, capsys, monkeypatch):
    cfg, _, _ = world
    from transformers import TextStreamer

    pieces: list[str] = []
    real = TextStreamer.on_finalized_text
    monkeypatch.setattr(TextStreamer, "on_finalized_text",
                        lambda self, text, stream_end=False: pieces.append(text) or real(self, text, stream_end))
    res = case_study.run(cfg, uid=1, item="2", methods=["behaviour"], stream=True)
    out = capsys.readouterr().out
    assert res["methods"][0]["explanation"] and len(pieces) > 1  # more than the final flush
    assert "".join(pieces).strip() == res["methods"][0]["explanation"]
    assert "Recommender (sasrec" in out and "top 5: 1." in out and "[RecExplainer-B]  decision:" in out
    assert res["methods"][0]["explanation"] in out
    pieces.clear()
    res = case_study.run(cfg, uid=1, item="2", methods=["behaviour"])  # capsys: stdout is no terminal
    out = capsys.readouterr().out
    assert not pieces and res["methods"][0]["explanation"] in out


def _error(capsys, root: Path, *extra: str) -> str:
    rc = case_study.main(_argv(root, *extra))
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    return lines[0]


def test_clear_errors(world, capsys):
    cfg, _, _ = world
    assert "unknown user id 999" in _error(capsys, cfg.root, "--user", "999")
    assert "unknown item id 41" in _error(capsys, cfg.root, "--user", "1", "--item", "41")
    msg = _error(capsys, cfg.root, "--user", "1", "--item", "Movei 17 (1976)")
    assert 'unknown title "Movei 17 (1976)"' in msg and '"Movie 17 (1967)" (17)' in msg
    assert "ambiguous" in _error(capsys, cfg.root, "--user", "1", "--item", "Movie 1")
    assert "unknown title" in _error(capsys, cfg.root, "--history", "Toy Story; 3")
    assert "unknown method" in _error(capsys, cfg.root, "--user", "1", "--methods", "none,hybrid")
    trained = cfg.llm_dir / "intention"
    hidden = cfg.llm_dir / "intention.hidden"
    trained.rename(hidden)
    try:
        msg = _error(capsys, cfg.root, "--user", "1", "--methods", "none,intention")
    finally:
        hidden.rename(trained)
    assert "intention" in msg and "not trained" in msg
    assert "bash shell/train.sh configs/tiny.yaml --task_type intention" in msg


def test_resolve_item_unit():
    titles = ["", "Heat (1995)", "Heat Wave (2001)", "Casino (1995)"]
    assert case_study.resolve_item("heat (1995)", titles) == 1
    assert case_study.resolve_item("casino", titles) == 3
    assert case_study.resolve_item(" 2 ", titles) == 2
    with pytest.raises(StageError, match="ambiguous"):
        case_study.resolve_item("heat", titles)
    with pytest.raises(StageError, match='closest titles: "Casino \\(1995\\)"'):
        case_study.resolve_item("Casno (1995)", titles)


def test_shell_script_runs_the_module(world):
    cfg, _, _ = world
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    base = ["bash", "shell/explain.sh", "configs/tiny.yaml"] + [a for o in _overrides(cfg.root) for a in ("--set", o)]
    proc = subprocess.run(base + ["--user", "4", "--item", "6", "--methods", "none,both", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["item"]["iid"] == 6 and [m["method"] for m in out["methods"]] == ["none", "both"]
    bad = subprocess.run(base + ["--user", "12345"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --user: unknown user id")
