"""Plain torch modules, one file per architecture, plus the checkpoint format and tokenizers; the
pipelines that answer with them are in ``models.pipelines``.

Nothing here imports the service (``app``) or the training code (``training``).
"""
