"""preprocess: readers for every raw layout, the filtering pipeline, the canonical files."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from preprocess.__main__ import main as preprocess_main
from preprocess.build import preprocess
from preprocess.dataset import CanonicalData, leave_one_out, load_canonical, sequence_stats, stats_table
from preprocess.pipeline import natural_order, run_filters
from preprocess.readers import RawData, read_raw, source_roles, strip_punctuation
from preprocess.synthetic import generate
from core.config import load_config
from core.utils import StageError

from tests.fixtures_preprocess import (
    amazon_fixture, make_cfg, steam_fixture, write_atomic, write_gz_lines, write_grouplens,
)

EXPECTED_SEQS = {1: [1, 2, 3, 4], 2: [2, 3, 1, 4], 3: [3, 4, 1, 2], 4: [4, 1, 2, 3]}


def _data_files(cfg) -> list[str]:
    d = cfg.data_dir
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------- MovieLens


def test_recbole_atomic(tmp_path: Path) -> None:
    ov = write_atomic(tmp_path / "raw" / "ml")
    cfg = make_cfg(tmp_path, *ov)
    info = preprocess(cfg)
    data = load_canonical(cfg)
    # u5 (2 events) is too short for leave-one-out; its only item 5 goes with it;
    # u1's second rating of item 3 is a duplicate (the earlier one is kept)
    assert data.sequences == EXPECTED_SEQS
    assert (data.n_users, data.n_items, data.n_interactions) == (4, 4, 16)
    assert info["n_interactions"] == 16 and info["sparsity"] == pytest.approx(0.0)
    assert data.titles == ["", "Toy Story", "Misérables, Les", "Heat", "Fargo"]
    assert data.items[0] == {"iid": 1, "title": "Toy Story", "year": 1995,
                             "genres": ["Animation", "Children's", "Comedy"],
                             "tags": ["Animation", "Children's", "Comedy"], "raw_id": "1"}
    steps = {s["step"]: s for s in info["steps"]}
    assert steps["dedup"]["dropped"] == 1 and steps["min_seq_len"]["dropped"] == 2
    assert set(info["raw_files"]) == {"ml/ml.inter", "ml/ml.item"}
    assert all(len(v["sha256"]) == 64 for v in info["raw_files"].values())
    assert "| 4 | 4 | 16 |" in (cfg.data_dir / "stats.md").read_text()


def test_grouplens_layout_matches_recbole(tmp_path: Path) -> None:
    cfg_a = make_cfg(tmp_path / "a", *write_atomic(tmp_path / "a" / "raw" / "ml"))
    cfg_g = make_cfg(tmp_path / "g", *write_grouplens(tmp_path / "g" / "raw" / "gl"))
    preprocess(cfg_a)
    preprocess(cfg_g)
    a, g = load_canonical(cfg_a), load_canonical(cfg_g)
    assert a.sequences == g.sequences == EXPECTED_SEQS
    # the year moves out of the GroupLens title; latin-1 text decodes to the same Unicode
    strip = lambda items: [{k: v for k, v in it.items() if k != "raw_id"} for it in items]  # noqa: E731
    assert strip(a.items) == strip(g.items)
    assert g.titles[2] == "Misérables, Les"


def test_min_rating_and_kcore(tmp_path: Path) -> None:
    ov = write_atomic(tmp_path / "raw" / "ml")
    cfg = make_cfg(tmp_path, *ov, "dataset.min_rating=3", "dataset.kcore=3")
    info = preprocess(cfg)
    data = load_canonical(cfg)
    # ratings 1-2 dropped: (2,4) and (3,2); then 3-core; users need >= 3 events
    assert all(len(s) >= 3 for s in data.sequences.values())
    assert {s["step"] for s in info["steps"]} >= {"min_rating", "kcore"}
    counts = np.bincount([i for s in data.sequences.values() for i in s])
    assert counts[1:].min() >= 3


# --------------------------------------------------------------------------- Amazon / Steam


@pytest.mark.parametrize("literal", [True, False])
def test_amazon(tmp_path: Path, literal: bool, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, *amazon_fixture(tmp_path / "raw" / "amz", meta_as_literal=literal))
    with caplog.at_level(logging.WARNING):
        info = preprocess(cfg)
    data = load_canonical(cfg)
    assert data.sequences == EXPECTED_SEQS
    assert info["skipped"]["items without title"] == 1
    assert info["steps"][1]["step"] == "require_title" and info["steps"][1]["dropped"] == 3
    assert "no title" in caplog.text
    it = data.item(1)
    assert it["title"] == "Toy Story & Friends"  # HTML entity decoded
    assert it["description"] == "Great game. Really."  # tags stripped, list joined
    assert it["tags"] == ["PC", "Animation"]  # store root dropped
    assert it["brand"] == "Nintendo" and it["feature"] == ["Online play", "4K"] and it["year"] == 1995
    assert "brand" not in data.item(4)  # empty fields are left out
    assert data.title(2) == "Misérables, Les"
    assert info["settings"]["files"] == {"reviews": "Video_Games_5.json.gz", "meta": "meta_Video_Games.json.gz"}


def test_steam(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, *steam_fixture(tmp_path / "raw" / "steam"))
    info = preprocess(cfg)
    data = load_canonical(cfg)
    assert data.sequences == EXPECTED_SEQS
    assert info["skipped"]["game without id"] == 1
    assert data.item(3) == {"iid": 3, "title": "Heat", "tags": ["Action", "Crime", "Indie"],
                            "genres": ["Action", "Crime"], "feature": ["Single-player"],
                            "brand": "Dev Studio", "year": 1995, "raw_id": "73"}


def test_paper_profiles_read_only_their_roles() -> None:
    # each profile reads only the roles of its own source (dataset.files is replaced whole by a child)
    for name, roles in (("games", ["reviews", "meta"]), ("movies", ["reviews", "meta"]),
                        ("steam", ["reviews", "games"]), ("ml100k", ["inter", "item"])):
        cfg = load_config(f"configs/{name}.yaml")
        assert source_roles(cfg) == roles
    games = load_config("configs/games.yaml").dataset
    assert (games.top_n_items, games.sample_users, games.final_kcore) == (2000, 4000, 5)


# --------------------------------------------------------------------------- bad input


def _cut_gzip_stream(folder: Path) -> None:
    path = folder / "Video_Games_5.json.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _cut_third_record(folder: Path) -> None:
    lines = gzip.decompress((folder / "meta_Video_Games.json.gz").read_bytes()).decode().splitlines()
    lines[2] = lines[2][:30]  # cut in the middle of a record
    write_gz_lines(folder / "meta_Video_Games.json.gz", lines)


@pytest.mark.parametrize(("damage", "message"), [
    (_cut_gzip_stream, r"Video_Games_5\.json\.gz: truncated or corrupt gzip"),
    (_cut_third_record, r"meta_Video_Games\.json\.gz:3: malformed line"),
])
def test_damaged_raw_file_names_file_and_line_and_writes_nothing(tmp_path: Path, damage, message) -> None:
    folder = tmp_path / "raw" / "amz"
    ov = amazon_fixture(folder)
    damage(folder)
    cfg = make_cfg(tmp_path, *ov)
    with pytest.raises(StageError, match=message):
        preprocess(cfg)
    assert _data_files(cfg) == []


def test_missing_field_and_bad_tsv(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "amz"
    ov = amazon_fixture(folder)
    write_gz_lines(folder / "Video_Games_5.json.gz", [json.dumps({"reviewerID": "A1", "asin": "B0001"})])
    with pytest.raises(StageError, match=r"Video_Games_5\.json\.gz:1: required field 'unixReviewTime'"):
        preprocess(make_cfg(tmp_path, *ov))
    ov = write_atomic(tmp_path / "raw" / "ml")
    with open(tmp_path / "raw" / "ml" / "ml.inter", "a", encoding="utf-8") as f:
        f.write("9\t1\t5\n")
    with pytest.raises(StageError, match=r"ml\.inter:21: expected 4 tab-separated fields, got 3"):
        preprocess(make_cfg(tmp_path, *ov))


def test_ratings_file_cut_mid_line_is_an_error(tmp_path: Path) -> None:
    # the cut keeps 4 fields (the timestamp is only shorter), so only the missing newline tells
    ov = write_atomic(tmp_path / "raw" / "ml")
    path = tmp_path / "raw" / "ml" / "ml.inter"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[:-3], encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()[-1].split("\t")) == 4
    cfg = make_cfg(tmp_path, *ov)
    with pytest.raises(StageError, match=r"ml\.inter:\d+: the file ends in the middle of line"):
        preprocess(cfg)
    assert _data_files(cfg) == []


def test_bad_utf8_byte_names_its_line(tmp_path: Path) -> None:
    # a small file is decoded in one chunk before its first line is yielded: the line must
    # still be the one with the byte, not line 1
    ov = write_atomic(tmp_path / "raw" / "ml")
    path = tmp_path / "raw" / "ml" / "ml.item"
    lines = path.read_bytes().split(b"\n")
    lines[5] += b"\xff"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StageError, match=r"ml\.item:6: not valid utf-8 text"):
        preprocess(make_cfg(tmp_path, *ov))


def test_missing_raw_file_says_how_to_fetch(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "dataset.fetch=none", "dataset.raw_subdir=nothing")
    with pytest.raises(StageError, match="missing raw file: .*tiny.inter.*download_data.sh"):
        preprocess(cfg)


def test_failed_force_keeps_previous_outputs(tmp_path: Path) -> None:
    ov = write_atomic(tmp_path / "raw" / "ml")
    cfg = make_cfg(tmp_path, *ov)
    preprocess(cfg)
    before = {p.name: p.read_bytes() for p in cfg.data_dir.iterdir()}
    with open(tmp_path / "raw" / "ml" / "ml.item", "a", encoding="utf-8") as f:
        f.write("broken line without tabs\n")
    with pytest.raises(StageError, match=r"ml\.item:7"):
        preprocess(cfg, force=True)
    assert {p.name: p.read_bytes() for p in cfg.data_dir.iterdir()} == before


def test_cli_exit_code_and_skip_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ov = write_atomic(tmp_path / "raw" / "ml")
    args = ["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}/out",
            "--set", f"paths.raw_dir={tmp_path}/raw"] + [x for o in ov for x in ("--set", o)]
    assert preprocess_main(args) == 0
    assert "| tiny | 4 | 4 | 16 | 0.000% |" in capsys.readouterr().out
    cfg = make_cfg(tmp_path, *ov)
    seq = cfg.data_dir / "sequences.txt"
    mtime = seq.stat().st_mtime_ns
    assert preprocess_main(args) == 0  # skipped
    assert seq.stat().st_mtime_ns == mtime
    assert preprocess_main(args + ["--force"]) == 0
    assert seq.stat().st_mtime_ns != mtime
    assert preprocess_main(args + ["--set", "dataset.raw_subdir=absent", "--force"]) == 2
    assert "missing raw file" in capsys.readouterr().err
    assert preprocess_main(["--config", "configs/tiny.yaml", "--set", "dataset.kcroe=3"]) == 2
    assert "dataset.kcroe" in capsys.readouterr().err


# --------------------------------------------------------------------------- pipeline units


def _raw(events: list[tuple[str, str, float]], titled: set[str] | None = None) -> RawData:
    raw = RawData()
    for u, i, t in events:
        raw.add(u, i, t)
    for i in set(raw.item_ids):
        raw.items[i] = {"title": f"T{i}"} if titled is None or i in titled else {}
    return raw


def test_iterative_kcore_cascades() -> None:
    cfg = load_config("configs/tiny.yaml", ["dataset.kcore=2", "dataset.min_seq_len=0"])
    # u3 has one event on 'c'; dropping u3 leaves item 'b' with one user -> then u2 too
    ev = [("u1", "a", 1), ("u1", "d", 2), ("u4", "a", 3), ("u4", "d", 4),
          ("u2", "a", 1), ("u2", "b", 2), ("u3", "b", 1), ("u3", "c", 2)]
    res = run_filters(_raw(ev), cfg.dataset)
    assert res.user_raw == ["u1", "u4"] and res.item_raw == ["a", "d"]
    assert res.sequences == [[1, 2], [1, 2]]
    kcore = {s["step"]: s for s in res.steps}["kcore"]
    assert (kcore["users"], kcore["items"], kcore["dropped"]) == (2, 2, 4)


def test_top_n_min_inters_sample_final_kcore() -> None:
    rng = np.random.default_rng(0)
    ev = []
    for u in range(200):
        for t, i in enumerate(rng.choice(50, size=12, replace=False, p=np.linspace(2, 1, 50) / np.linspace(2, 1, 50).sum())):
            ev.append((f"user{u:03d}", str(int(i)), float(t)))
    base = ["dataset.kcore=0", "dataset.top_n_items=20", "dataset.min_user_inters=4",
            "dataset.sample_users=60", "dataset.final_kcore=3"]
    d1 = load_config("configs/tiny.yaml", base).dataset
    r1 = run_filters(_raw(ev), d1)
    r1b = run_filters(_raw(ev), d1)
    r2 = run_filters(_raw(ev), load_config("configs/tiny.yaml", base + ["dataset.seed=7"]).dataset)
    counts = {}
    for u, i, _ in ev:
        counts[i] = counts.get(i, 0) + 1
    top20 = set(sorted(counts, key=lambda k: (-counts[k], int(k)))[:20])
    assert set(r1.item_raw) <= top20
    steps = {s["step"]: s for s in r1.steps}
    assert steps["top_n_items"]["items"] == 20
    assert steps["sample_users"]["users"] == 60
    assert len(r1.sequences) <= 60 and min(map(len, r1.sequences)) >= 3
    assert r1.user_raw == r1b.user_raw  # seeded
    assert r1.user_raw != r2.user_raw  # another seed, another sample
    flat = np.bincount([i for s in r1.sequences for i in s])
    assert flat[1:].min() >= 3


def test_dedup_keeps_earliest_and_ties_keep_file_order() -> None:
    d = load_config("configs/tiny.yaml", ["dataset.min_seq_len=0"]).dataset
    ev = [("u", "b", 5), ("u", "a", 9), ("u", "c", 5), ("u", "a", 1)]
    res = run_filters(_raw(ev), d)
    assert [res.item_raw[i - 1] for i in res.sequences[0]] == ["a", "b", "c"]


def test_natural_order_and_text_options(tmp_path: Path) -> None:
    assert natural_order(["10", "9", "100"]) == ["9", "10", "100"]
    assert natural_order(["B2", "0A", "B10"]) == ["0A", "B10", "B2"]
    assert strip_punctuation("Children's Film-Noir: the (end)!") == "Childrens Film Noir the end"
    items = {"1": ("Toy Story!", 1995, ["Comedy"]), "2": ("X" * 50, 1995, ["Drama"]),
             "3": ("Heat", 1995, ["Action"]), "4": ("Fargo?", 1996, ["Crime"]), "5": ("N", 1995, ["Drama"])}
    ov = write_atomic(tmp_path / "raw" / "ml", items=items)
    cfg = make_cfg(tmp_path, *ov, "dataset.strip_punct=true", "dataset.max_title_chars=20")
    info = preprocess(cfg)
    data = load_canonical(cfg)
    assert "X" * 50 not in data.titles and "Toy Story" in data.titles and "Fargo" in data.titles
    assert info["skipped"]["items without title"] == 1


# --------------------------------------------------------------------------- synthetic / tiny


def test_tiny_keeps_everything_and_is_learnable(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    info = preprocess(cfg)  # raw files are generated on demand for the synthetic profile
    data = load_canonical(cfg)
    assert (data.n_users, data.n_items) == (cfg.dataset.synthetic_users, cfg.dataset.synthetic_items) == (120, 60)
    assert info["n_interactions"] == data.n_interactions and data.stats()["min_seq_len"] >= 8
    assert any(not t.isascii() for t in data.titles)
    assert all(data.item(i).get("tags") for i in range(1, 61))
    # the structure a sequential model can learn: i -> i+1 inside a genre block
    block = 60 // 6
    pairs = [(a, b) for s in data.sequences.values() for a, b in zip(s, s[1:])]
    nxt = sum(1 for a, b in pairs if (a - 1) // block == (b - 1) // block and (b - a) % block == 1)
    assert nxt / len(pairs) > 0.4
    # deterministic by seed; another seed gives another dataset
    assert generate(120, 60, 2024) == generate(120, 60, 2024)
    assert generate(120, 60, 2024) != generate(120, 60, 2025)


# --------------------------------------------------------------------------- load_canonical


def _good_dir(tmp_path: Path):
    cfg = make_cfg(tmp_path, *write_atomic(tmp_path / "raw" / "ml"))
    preprocess(cfg)
    return cfg


def test_split_helpers(tmp_path: Path) -> None:
    data = load_canonical(_good_dir(tmp_path))
    assert isinstance(data, CanonicalData)
    s = data.split(2)
    assert (s.train, s.valid, s.test) == ([2, 3], 1, 4)
    assert data.history(2, "valid") == [2, 3] and data.history(2, "test") == [2, 3, 1]
    assert data.target(2, "valid") == 1 and data.target(2, "test") == 4
    assert data.train_pairs(2) == [([2], 3)]
    assert data.users == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        leave_one_out([1, 2])
    with pytest.raises(KeyError, match="unknown item id 9"):
        data.item(9)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: (d / "sequences.txt").write_text("1 1 2 3\n2 1 2 77\n"), r"sequences\.txt:2: unknown item id 77"),
        (lambda d: (d / "sequences.txt").write_text("1 1 2 3\n1 1 2 3\n"), r"sequences\.txt:2: user 1 listed twice"),
        (lambda d: (d / "sequences.txt").write_text("1 1 2 x\n"), r"sequences\.txt:1: expected integers"),
        (lambda d: (d / "sequences.txt").write_text("1 1 2\n"), r"sequences\.txt:1: user 1 has 2 items"),
        (lambda d: (d / "items.jsonl").write_text('{"iid": 2, "title": "x"}\n'), r"items\.jsonl:1: expected item"),
        (lambda d: (d / "items.jsonl").write_text("{bad\n"), r"items\.jsonl:1: malformed JSON"),
        (lambda d: (d / "dataset.json").unlink(), r"missing canonical dataset\.json.*python -m preprocess"),
    ],
)
def test_load_canonical_is_strict(tmp_path: Path, mutate, pattern: str) -> None:
    cfg = _good_dir(tmp_path)
    mutate(cfg.data_dir)
    with pytest.raises(StageError, match=pattern):
        load_canonical(cfg)


def test_load_canonical_detects_stale_counts(tmp_path: Path) -> None:
    cfg = _good_dir(tmp_path)
    info = json.loads((cfg.data_dir / "dataset.json").read_text())
    info["n_interactions"] = 99
    (cfg.data_dir / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(StageError, match="n_interactions=99 but the data files hold 16"):
        load_canonical(cfg)


def test_stats_table_form() -> None:
    st = sequence_stats([[1, 2, 3], [2, 3, 4, 5]], 10)
    assert st["n_interactions"] == 7 and st["sparsity"] == pytest.approx(1 - 7 / 20)
    assert stats_table("games", st).splitlines()[2] == "| games | 2 | 10 | 7 | 65.000% |"


def test_read_raw_rejects_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=re.escape("dataset.source must be movielens | amazon | steam")):
        read_raw(make_cfg(tmp_path, "dataset.source=yelp"))
    with pytest.raises(StageError, match="min_seq_len must be >= 3"):
        preprocess(make_cfg(tmp_path, "dataset.min_seq_len=2"))
