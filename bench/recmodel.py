"""SASRec on ML-100K in the standard academic setting: speed, memory and quality.

    PYTHONPATH=. python bench/recmodel.py [--config configs/ml100k.yaml] [--max-epochs N] [--set key=value ...]

Setting (forced on top of the config): max sequence length 50, hidden 64, 2 layers,
2 heads, inner size 256, dropout 0.2, full-softmax cross-entropy, Adam lr 1e-3, batch 256,
leave-one-out with full ranking over all items, early stop after `recmodel.patience` epochs
without valid NDCG@10 gain (best-on-valid weights tested). Model selection uses the
config's protocol (`recmodel.eval_mask_history`, default: history masked).
Reads the canonical data of the config (run `python -m preprocess --config ...` first);
trains into a temporary folder, so the config's own recmodel/ outputs are untouched.

Prints seconds per training epoch, seconds per full-ranking evaluation of all users,
peak resident memory of the process and test HR@10 / NDCG@10 (plus @5/@20), and the test
HR@10 / NDCG@10 of the same weights under both ranking protocols side by side: the user's
history masked (ours; UniRec's one_vs_all, the original's) and only padding masked
(RecBole's sequential protocol, where history items compete with the target). Measured on
ML-100K: 0.207 / 0.109 history masked, 0.135 / 0.067 padding only (RecBole 1.2.1's SASRec:
0.136 / 0.064). Set OMP_NUM_THREADS to the cores you can use.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# run as a script, this file's folder comes first on sys.path and its name would shadow the
# `recmodel` package; look modules up from the repository root instead
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from recmodel.train import fit  # noqa: E402
from core.config import ConfigError, load_config  # noqa: E402
from core.utils import StageError, setup_logging  # noqa: E402

log = logging.getLogger("bench.recmodel")

STANDARD = [
    "recmodel.model=sasrec", "recmodel.max_seq_len=50", "recmodel.hidden_size=64", "recmodel.num_layers=2",
    "recmodel.num_heads=2", "recmodel.inner_size=256", "recmodel.hidden_act=gelu", "recmodel.hidden_dropout=0.2",
    "recmodel.attn_dropout=0.2", "recmodel.loss=ce", "recmodel.lr=0.001", "recmodel.weight_decay=0.0",
    "recmodel.batch_size=256", "recmodel.eval_ks=[5,10,20]",
]


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


#: column titles of the two ranking protocols (keys of metrics.json "test_by_protocol")
PROTOCOL_TITLES = {"history_masked": "history masked (ours)", "padding_only": "padding only (RecBole)"}


def protocol_table(res: dict) -> str:
    """Test HR@10 / NDCG@10 under both ranking protocols, side by side."""
    by = res["test_by_protocol"]
    names = [n for n in PROTOCOL_TITLES if n in by]
    head = f"{'test, protocol':<28}" + "".join(f"{PROTOCOL_TITLES[n]:>26}" for n in names)
    row = f"{'HR@10 / NDCG@10':<28}" + "".join(
        f"{by[n]['hr@10']:.4f} / {by[n]['ndcg@10']:.4f}".rjust(26) for n in names)
    return head + "\n" + row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ml100k.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides applied after the standard setting")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: recmodel.epochs)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, STANDARD + args.overrides)
        if args.max_epochs:
            cfg.recmodel.epochs = args.max_epochs
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench_recmodel_") as tmp:
            res = fit(cfg, out_dir=Path(tmp), force=True, progress=args.progress)
        wall = time.perf_counter() - t0
    except (StageError, ConfigError) as e:
        log.error("%s", e)
        return 2
    rc = cfg.recmodel
    test = res["test"]
    print(f"\nSASRec on {cfg.dataset.name} ({res['n_users']} users, {res['n_items']} items, "
          f"{res['n_train_transitions']} train transitions), device {res['device']}, "
          f"{torch.get_num_threads()} threads")
    print(f"setting: len {rc.max_seq_len}, hidden {rc.hidden_size}, {rc.num_layers} layers, {rc.num_heads} heads, "
          f"dropout {rc.hidden_dropout}, {rc.loss} loss, lr {rc.lr}, batch {rc.batch_size}, patience {rc.patience}")
    print(f"{'epochs run (best)':<28}{res['epochs_run']} ({res['best_epoch']})")
    print(f"{'s / epoch (train)':<28}{res['seconds_per_epoch']:.2f}")
    print(f"{'s / eval (full ranking)':<28}{res['seconds_per_eval']:.3f}")
    print(f"{'wall s (total)':<28}{wall:.1f}")
    print(f"{'peak RSS MiB':<28}{peak_rss_mib():.0f}")
    for k in (5, 10, 20):
        print(f"{f'test HR@{k} / NDCG@{k}':<28}{test[f'hr@{k}']:.4f} / {test[f'ndcg@{k}']:.4f}")
    print(f"{'valid HR@10 / NDCG@10':<28}{res['valid']['hr@10']:.4f} / {res['valid']['ndcg@10']:.4f}"
          f"  ({res['eval_protocol']})")
    print(protocol_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
