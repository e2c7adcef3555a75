"""Raw sources -> the canonical dataset every other stage reads.

- `python -m preprocess.fetch`: raw files and models (idempotent, verified).
- `python -m preprocess.synthetic`: the small generated MovieLens-format dataset (tiny).
- `python -m preprocess`: readers (readers.py) -> filters (pipeline.py) -> data/ (build.py).
- `preprocess.dataset.load_canonical(cfg)`: the strict loader + leave-one-out split views.
"""
