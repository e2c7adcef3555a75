"""Raw sources -> the canonical dataset every other stage reads.

- `python -m preprocess.fetch`: the raw files (idempotent, verified; the models are
  `python -m src.fetch_models`, the LLM side's).
- `python -m preprocess.synthetic`: the small generated MovieLens-format dataset (tiny).
- `python -m preprocess`: readers (readers.py) -> filters (pipeline.py) -> data/ (build.py).
- `preprocess.dataset.load_canonical(cfg)`: the strict loader + leave-one-out split views.
"""
