"""Table 1 over training seeds: seed roots that share the main run's inputs, and the summary."""

import csv

import pytest

from core.config import load_config
from core.utils import StageError, write_json
from src.seeds import SHARED, link_root, main as seeds_main, parse_seeds, same_records, seed_root, table1_seeds


def _cfg(tmp_path, *more):
    return load_config("configs/tiny.yaml", [f"paths.root={tmp_path}/out", "train.seed=42", *more])


def _main_inputs(cfg, names=SHARED):
    for name in names:
        (cfg.root / name).mkdir(parents=True, exist_ok=True)


def test_parse_seeds_keeps_order_and_rejects_bad_lists():
    assert parse_seeds("42,7,1") == [42, 7, 1]
    assert parse_seeds(" 3 ") == [3]
    for bad in ("", "a,b", "7,7", "1.5"):
        with pytest.raises(StageError, match="--seeds"):
            parse_seeds(bad)


def test_seed_roots_link_the_main_inputs(tmp_path):
    cfg = _cfg(tmp_path, "data_gen.sharegpt_replay=96")
    assert seed_root(cfg, 42) == cfg.root  # the config's own seed is the main run
    assert seed_root(cfg, 7) == tmp_path / "out_seed7"
    with pytest.raises(StageError, match=r"out/data: missing; run the main pipeline first"):
        link_root(cfg, 7)
    assert not (tmp_path / "out_seed7").exists()  # nothing half-made
    _main_inputs(cfg, ("data", "recmodel", "tasks"))
    with pytest.raises(StageError, match=r"out/replay: missing"):  # this config replays
        link_root(cfg, 7)
    assert not (tmp_path / "out_seed7").exists()
    _main_inputs(cfg)
    (cfg.root / "tasks" / "both_train.json").write_text("[]")
    root = link_root(cfg, 7)
    assert root == tmp_path / "out_seed7"
    for name in SHARED:
        assert (root / name).is_symlink() and (root / name).resolve() == (cfg.root / name).resolve()
    assert (root / "tasks" / "both_train.json").read_text() == "[]"
    assert link_root(cfg, 7) == root  # idempotent
    assert link_root(cfg, 42) == cfg.root and not (cfg.root / "data").is_symlink()
    (tmp_path / "out_seed3" / "tasks").mkdir(parents=True)
    with pytest.raises(StageError, match=r"out_seed3/tasks: exists and is not a link"):
        link_root(cfg, 3)
    assert list((tmp_path / "out_seed3").iterdir()) == [tmp_path / "out_seed3" / "tasks"]  # left as it was


def test_seed_roots_link_replay_only_where_the_config_replays(tmp_path):
    cfg = _cfg(tmp_path, "data_gen.sharegpt_replay=0")
    _main_inputs(cfg, ("data", "recmodel", "tasks"))
    root = link_root(cfg, 7)
    assert sorted(p.name for p in root.iterdir()) == ["data", "recmodel", "tasks"]


def _metrics(cfg, seed, method, mode, d):
    write_json(seed_root(cfg, seed) / "eval" / method / f"{mode}.metrics.json", d)


def test_table_has_mean_sd_and_each_seed_for_trained_variants_only(tmp_path):
    cfg = _cfg(tmp_path)
    for seed, acc, pw in ((42, 0.9, 0.84), (7, 0.8, 0.80)):
        _metrics(cfg, seed, "both", "uidiid2binary", {"acc": acc, "n": 500, "ci95": {"acc": [acc - .03, acc + .03]}})
        _metrics(cfg, seed, "both", "uidiid2rank", {"ndcg@5": 0.5, "n": 200, "pointwise": {"ndcg@5": pw, "n": 200}})
        _metrics(cfg, seed, "none", "uidiid2binary", {"acc": 0.5, "n": 500})
    _metrics(cfg, 42, "intention", "uid2next", {"hr@5": 0.24, "ndcg@5": 0.2, "n": 100})
    rows, columns, notes = table1_seeds(cfg, [42, 7])
    assert columns == ["Method", "Task1 H@5", "Task1 N@5", "Task2 N@5", "Task3 ACC", "Task6 HCR"]
    by = {r[0]: r[1:] for r in rows}
    assert list(by) == ["RecExplainer-B", "RecExplainer-I", "RecExplainer-H", "RecExplainer-H (pointwise)"]
    h = by["RecExplainer-H"]
    assert h[3] == "0.8500 ± 0.0707 (0.900 / 0.800)"  # sample sd of 0.9 and 0.8
    assert h[2] == "0.5000 ± 0.0000 (0.500 / 0.500)"
    assert h[0] == "-"
    assert by["RecExplainer-H (pointwise)"][2] == "0.8200 ± 0.0283 (0.840 / 0.800)"
    assert by["RecExplainer-H (pointwise)"][0] == ""  # no such cell in any seed
    assert by["RecExplainer-B"][4] == "N/A"
    assert by["RecExplainer-I"][0] == "-"  # seed 7 lacks it: no mean over one seed
    assert any(n.startswith("seed 7 (") and "--seeds 7" in n for n in notes)  # each seed's gaps
    assert any(n.startswith(f"seed 42 ({cfg.root})") for n in notes)
    assert "train.seed = 42, 7" in notes[0] and "eval.sample_seed = 42" in notes[0]
    one, _, _ = table1_seeds(cfg, [42])
    assert {r[0]: r[1:] for r in one}["RecExplainer-H"][3] == "0.9000"
    only, _, notes = table1_seeds(cfg, [42, 7], task_types=["both"])
    assert [r[0] for r in only] == ["RecExplainer-H", "RecExplainer-H (pointwise)"]
    assert any(n.endswith("--seeds 7 --task_types both") for n in notes)


def test_cli_links_then_writes_the_table(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _main_inputs(cfg)
    args = ["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}/out", "--set", "train.seed=42",
            "--seeds", "42,7"]
    assert seeds_main(args + ["--link"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == [f"42 {cfg.root}", f"7 {tmp_path / 'out_seed7'}"]
    for seed in (42, 7):
        _metrics(cfg, seed, "both", "uidiid2binary", {"acc": 0.9, "n": 500})
    assert seeds_main(args) == 0
    md = (cfg.tables_dir / "table1_seeds.md").read_text()
    assert md.strip() in capsys.readouterr().out
    assert "Table 1 over training seeds" in md and "0.9000 ± 0.0000 (0.900 / 0.900)" in md
    with open(cfg.tables_dir / "table1_seeds.csv", newline="") as f:
        assert list(csv.reader(f))[0][0] == "Method"
    assert seeds_main(args[:-1] + ["7,x"]) == 2  # one clear error, exit 2
    assert "--seeds: expected" in capsys.readouterr().err
    assert seeds_main(args + ["--task_types", "both,hybrid"]) == 2
    assert "--task_types: unknown variant 'hybrid'" in capsys.readouterr().err


def test_a_seed_root_trains_the_main_runs_record_count(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    with pytest.raises(StageError, match=r"llm/both/meta\.json: missing; train the main run's both first"):
        same_records(cfg, "both")
    write_json(cfg.llm_dir / "both" / "meta.json", {"done": True, "time_budget": {"rows_kept": 1523}})
    assert same_records(cfg, "both") == ["pipeline.time_limit_s=0", "train.max_train_samples_per_type.both=1523"]
    write_json(cfg.llm_dir / "both" / "meta.json", {"done": True, "time_budget": None})  # no limit: its records
    assert same_records(cfg, "both") == ["pipeline.time_limit_s=0"]
    assert seeds_main(["--config", "configs/tiny.yaml", "--set", f"paths.root={cfg.root}", "--seeds", "42,7",
                       "--same_records", "both"]) == 0
    assert capsys.readouterr().out.split() == ["pipeline.time_limit_s=0"]
