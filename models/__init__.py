"""Plain torch modules, one file per architecture, plus the checkpoint format and tokenizers.

Nothing here imports the service (``app``) or the training code (``training``).
"""
