"""The one error a pipeline raises for input its model cannot take."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input the model cannot answer: no ``[MASK]``, more tokens than its positions, a target outside its
    vocabulary, a prompt that encodes to nothing. The message says which, in words a caller can act on.

    Only pipelines raise it, and only for their caller's input; any other exception is a fault.
    """
