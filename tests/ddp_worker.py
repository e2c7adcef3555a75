"""One rank of a multi-process tiny-profile training run (launched by tests/test_llm_distributed.py).

    accelerate launch --cpu --num_processes 2 tests/ddp_worker.py --root DIR --task_type behaviour \
        [--max_steps N] [--stop_at K] [--trace] [--set key=value ...]

It is ``src.train.train`` with the tests' fake recommender (no SASRec needed) and, with
``--trace``, a log of which training records each rank fed to the model:
``DIR/trace.rank<R>.jsonl``, one row per training forward ``{"rank", "idx": [...]}``
(indices into the training dataset), and of every output it wrote: ``DIR/writes.rank<R>.jsonl``. ``--stop_at K`` ends training right after step K (a checkpoint
must be due there), which is how the tests stand in for a killed run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--task_type", default="behaviour")
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--stop_at", type=int, default=None)
    p.add_argument("--trace", action="store_true")
    p.add_argument("--set", dest="sets", action="append", default=[])
    a = p.parse_args()

    import torch
    from transformers import TrainerCallback

    import src.train as st
    from core.utils import setup_logging
    from tests.fixtures_llm import FakeEncoder, tiny_cfg

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    setup_logging()
    root = Path(a.root)
    cfg = tiny_cfg(root, *a.sets)  # the same paths the test wrote its task files under
    rank = int(os.environ.get("RANK", "0"))

    if a.trace:
        trace = root / f"trace.rank{rank}.jsonl"

        class TracedDataset(st.TaskDataset):
            def __getitem__(self, i: int) -> dict:
                return {**self.rows[i], "_idx": i}

        class TracedCollator(st.TaskCollator):
            def __call__(self, rows):
                batch = super().__call__(rows)
                if rows and "_idx" in rows[0]:
                    batch["_idx"] = torch.tensor([r["_idx"] for r in rows])
                return batch

        # logged where the model consumes the batch (the data loader fetches one batch ahead)
        forward = st.RecExplainer.forward

        @functools.wraps(forward)  # the Trainer finds label_names in forward's signature
        def traced_forward(self, *args, _idx=None, **kw):
            if _idx is not None:
                with trace.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"rank": rank, "idx": _idx.tolist()}) + "\n")
            return forward(self, *args, **kw)

        st.RecExplainer.forward = traced_forward

        orig_ds = st.TaskDataset

        def make_ds(records, tokenizer, cfg, desc="encode"):  # only the training set is traced
            return (TracedDataset if desc.endswith("_train") else orig_ds)(records, tokenizer, cfg, desc=desc)

        st.TaskDataset = make_ds
        st.TaskCollator = TracedCollator

        # every output write, per rank: only rank 0 may write the model, meta.json and logs
        import src.probe as sp

        writes = root / f"writes.rank{rank}.jsonl"

        def note(kind: str, path) -> None:
            with writes.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"rank": rank, "kind": kind, "path": str(path)}) + "\n")

        save_trained, write_json = st.save_trained, st.write_json

        def traced_save(model, tokenizer, out_dir):
            note("save_trained", out_dir)
            return save_trained(model, tokenizer, out_dir)

        def traced_write_json(path, obj, *args, **kw):
            note("write_json", path)
            return write_json(path, obj, *args, **kw)

        class TracedAppender(st.JsonlAppender):
            def append(self, row: dict) -> None:
                note("append", self.path)
                super().append(row)

        st.save_trained, st.write_json = traced_save, traced_write_json
        st.JsonlAppender = sp.JsonlAppender = TracedAppender

    callbacks = []
    if a.stop_at:
        class StopAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == a.stop_at:
                    control.should_training_stop = True
                return control

        callbacks.append(StopAt())
    st.train(cfg, a.task_type, rec_encoder=FakeEncoder(), max_steps=a.max_steps, callbacks=callbacks)
    st.close_process_group()  # as src.train's entry does after a successful run
    return 0


if __name__ == "__main__":
    sys.exit(main())
