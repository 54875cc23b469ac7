"""Attention drawn as heatmaps: one translation's (source tokens across, target tokens down), and a
Transformer's layers and heads (``attention_maps``): one layer's heads side by side with the tokens, or
every layer × head as a sheet of thumbnails."""

from __future__ import annotations

import io
from functools import cache

from models.pipelines.attention_maps import AttentionMap
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



# One layer's heads are drawn with their tokens, about a third of an inch each; a sheet of several layers
# draws each (layer, head) as a thumbnail this many inches wide, without them. Both within 24 inches.
INCHES_PER_TOKEN = 0.3
THUMBNAIL_INCHES = 1.6
MAX_INCHES = 24.0


def attention_maps_png(attention: AttentionMap, layers: list[int], heads: list[int], title: str | None = None) -> bytes:
    """``attention.weights`` (layers, heads, queries, keys) as PNG bytes: queries down, keys across. One layer:
    its heads in a row, each labelled with the tokens; several: a grid of thumbnails, a row per layer."""
    from matplotlib.figure import Figure

    family = _cjk_font_family()
    font = {"family": [family, "sans-serif"]} if family else {}
    weights = attention.weights
    rows, cols = len(layers), len(heads)
    labelled = rows == 1
    if labelled:
        side = max(2.0, INCHES_PER_TOKEN * max(len(attention.queries), len(attention.keys)) + 1.2)
        size = (min(side * cols, MAX_INCHES), min(side + 0.8, MAX_INCHES))
    else:
        size = (min(THUMBNAIL_INCHES * cols + 0.6, MAX_INCHES), min(THUMBNAIL_INCHES * rows + 0.8, MAX_INCHES))
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False)
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            axes = grid[i][j]
            image = axes.imshow(weights[i, j].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
            axes.set_title(f"layer {layer} head {head}", fontsize=9)
            if labelled:
                axes.set_xticks(range(len(attention.keys)), attention.keys, rotation=90, fontdict=font, fontsize=8)
                axes.set_yticks(range(len(attention.queries)), attention.queries if j == 0 else [],
                                fontdict=font, fontsize=8)
            else:
                axes.set_xticks([])
                axes.set_yticks([])
    figure.colorbar(image, ax=grid, shrink=0.8 if labelled else 1.0)
    if title:
        figure.suptitle(title, fontfamily=font.get("family", "sans-serif"))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
