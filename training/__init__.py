"""Training: corpora, tokenizer training, one trainer per family, evaluation and the CLI.

Run ``python -m training --help``. Trainers write checkpoints in the format of ``models.checkpoint``.
"""
