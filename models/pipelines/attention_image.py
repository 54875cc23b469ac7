"""The attention of one translation drawn as a heatmap: source tokens across, target tokens down."""

from __future__ import annotations

import io
from functools import cache

from models.pipelines.errors import InvalidInput
from models.pipelines.translation import Translation


@cache
def _cjk_font_family() -> str | None:
    """Register the Noto Sans CJK font shipped on PyPI so Chinese tick labels render as glyphs."""
    try:
        from noto_cjk_sans_otc import FONT_PATH
    except ImportError:
        return None
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(FONT_PATH))
    return font_manager.FontProperties(fname=str(FONT_PATH)).get_name()


def attention_png(result: Translation, title: str | None = None) -> bytes:
    """A heatmap of ``result.attention``: source tokens across, target tokens down, as PNG bytes."""
    if result.attention is None:
        raise InvalidInput("this model was trained without attention; there is nothing to draw")
    if not result.target_tokens:
        raise InvalidInput("the translation is empty, so there is no alignment to draw")
    from matplotlib.figure import Figure

    family = _cjk_font_family()
    rows, cols = len(result.target_tokens), len(result.source_tokens)
    # About half an inch per token, within limits that keep a long input's image a sane size.
    figure = Figure(figsize=(min(max(3.0, 0.45 * cols + 1.8), 24.0), min(max(2.5, 0.4 * rows + 1.4), 24.0)),
                    dpi=120)
    axes = figure.add_subplot()
    image = axes.imshow(result.attention, cmap="viridis", vmin=0.0, vmax=1.0,
                        aspect="auto")
    font = {"family": [family, "sans-serif"]} if family else {}
    words_across = any(len(token) > 1 for token in result.source_tokens)  # side by side, words would overlap
    axes.set_xticks(range(cols), result.source_tokens, rotation=90 if words_across else 0, fontdict=font)
    axes.set_yticks(range(rows), result.target_tokens, fontdict=font)
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    if title:
        axes.set_title(title, fontdict=font)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

