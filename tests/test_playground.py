"""The browser playground at ``/``: every panel, driven in headless Chromium, shows real results.

Debian's ``chromium`` is driven through Playwright's Python package (``executable_path``), so no browser
download is needed. ``make test`` installs Chromium (and a CJK font) with apt; without it these tests fail,
saying how to install it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api as playwright_api

from .conftest import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # two shared cores: a panel's request may wait behind other work

Page = playwright_api.Page
expect = playwright_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install chromium fonts-wqy-zenhei` "
                    "(or run `make browser` as root)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_playground(browser: playwright_api.Browser, base_url: str) -> tuple[Page, list[str]]:
    """A fresh page on the playground, once it has asked the service what is loaded; and its script errors."""
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base_url + "/")
    expect(page.locator("#models-status")).not_to_have_text("Looking for models…")
    return page, errors


@pytest.fixture
def page(browser: playwright_api.Browser, server: str) -> Iterator[Page]:
    page, errors = open_playground(browser, server)
    yield page
    page.context.close()
    assert not errors, f"the playground's script failed: {errors}"


def submit(page: Page, form: str, route: str) -> Any:
    """Submit ``form``, wait until it shows a result (failing with its alert text on an error); the JSON answer."""
    with page.expect_response(lambda r: r.url.endswith(route) and r.request.method == "POST") as answer:
        page.click(f"#{form} button[type=submit]")
    page.wait_for_selector(f"#{form}[data-state=done], #{form}[data-state=error]")
    if page.get_attribute(f"#{form}", "data-state") == "error":
        alert = page.locator(f"#{form} + .error").inner_text()
        pytest.fail(f"{form} showed an error: {alert}")
    response = answer.value
    return response.text() if "event-stream" in response.headers.get("content-type", "") else response.json()


def bar_labels(page: Page, selector: str) -> list[str]:
    return page.locator(f"{selector} .bar-label").all_text_contents()


# ---- one function per panel: fill the inputs, click, check what is shown against the service's answer ----


def similar_words(page: Page) -> None:
    page.fill("#w2v-positive", "king")
    page.fill("#w2v-negative", "")
    page.select_option("#w2v-model", "sg")
    page.fill("#w2v-topn", "6")
    body = submit(page, "most-similar-form", "/v1/word2vec/most-similar")
    expect(page.locator("#w2v-results li")).to_have_count(6)
    assert bar_labels(page, "#w2v-results") == [n["word"] for n in body["results"]]
    assert "king" not in bar_labels(page, "#w2v-results")

    page.fill("#sim-a", "king")
    page.fill("#sim-b", "queen")
    body = submit(page, "similarity-form", "/v1/word2vec/similarity")
    assert page.locator("#sim-result output").inner_text() == f"{body['similarity']:.3f}"


def translation(page: Page) -> None:
    page.fill("#tr-text", "我们明天见。")
    page.select_option("#tr-direction", "zh-en")
    page.fill("#tr-beam", "1")
    result = submit(page, "translate-form", "/v1/translate")["results"][0]
    source, target = result["source_tokens"], result["target_tokens"]
    assert source and target, result
    expect(page.locator("#tr-result .translated")).to_have_text(result["translation"] or "(empty)")
    heatmap = page.locator("#tr-heatmap table.heatmap")
    assert heatmap.locator("thead th[scope=col]:not(.corner)").all_inner_texts() == source
    assert heatmap.locator("tbody th[scope=row]").all_inner_texts() == target
    cells = heatmap.locator("tbody td")
    expect(cells).to_have_count(len(target) * len(source))
    shown = [float(title.rsplit(": ", 1)[1]) for title in cells.evaluate_all("cells => cells.map(c => c.title)")]
    expected = [weight for row in result["attention"] for weight in row]
    # The page shows the reply's four-place weights to three places: off by at most half a thousandth, exactly
    # half of one when the fourth place is 5 (the 1e-9 absorbs the binary representation of that half).
    assert shown == pytest.approx(expected, abs=5e-4 + 1e-9)

    page.fill("#tr-text", "See you tomorrow.")
    page.select_option("#tr-direction", "auto")
    body = submit(page, "translate-form", "/v1/translate")
    assert body["direction"] == "en-zh"
    expect(page.locator("#tr-result .meta").first).to_have_text(f" {body['model']} (en-zh)")


def fill_mask(page: Page) -> None:
    page.fill("#fm-text", "My [MASK] is as boundless as the [MASK].")
    page.fill("#fm-topk", "4")
    body = submit(page, "fill-mask-form", "/v1/fill-mask")
    expect(page.locator("#fm-results .mask")).to_have_count(2)
    for m, predictions in enumerate(body["predictions"]):
        mask = f"#fm-results .mask:nth-child({m + 1})"
        expect(page.locator(f"{mask} li")).to_have_count(4)
        assert bar_labels(page, mask) == [p["token_str"] for p in predictions]


def next_sentence(page: Page) -> None:
    page.fill("#ns-a", "But soft, what light?")  # short: the tiny model has few positions
    page.fill("#ns-b", "It is the east.")
    body = submit(page, "next-sentence-form", "/v1/next-sentence")
    assert 0 <= body["is_next_probability"] <= 1
    expect(page.locator("#ns-result output")).to_have_text(re.compile(r"^\d+(\.\d)?%$"))


def generation(page: Page) -> None:
    assert "gpt" in page.locator("#gen-model option").evaluate_all("options => options.map(o => o.value)")
    page.fill("#gen-prompt", "ROMEO:\n")
    page.select_option("#gen-model", "gpt")
    page.fill("#gen-tokens", "40")
    stream = submit(page, "generate-form", "/v1/generate")
    events = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e).get("text", "") for e in events[:-1])
    assert streamed.strip(), "the model streamed no text"
    expect(page.locator("#gen-output")).to_have_attribute("data-state", "done")
    assert page.locator("#gen-output .generated").text_content() == streamed
    expect(page.locator("#gen-meta")).to_contain_text("tokens in")


def classification(page: Page) -> None:
    page.select_option("#clf-model", "cnn")
    body = submit(page, "classify-form", "/v1/classify")
    label = body["results"][0]["label"]
    assert label in {"comedy", "history", "tragedy"}
    expect(page.locator("#clf-label output")).to_have_text(label)
    expect(page.locator("#clf-results li")).to_have_count(3)
    assert sorted(bar_labels(page, "#clf-results")) == ["comedy", "history", "tragedy"]
    assert bar_labels(page, "#clf-results")[0] == label  # bars are ranked, the winner first


def hover_weights(page: Page, query: int) -> list[list[float]]:
    """Hover the ``query``-th token on the left; each token on the right's weights, one per head shown."""
    page.hover(f"#att-view .att-queries li:nth-child({query + 1})")
    expect(page.locator("#att-view")).to_have_attribute("data-query", str(query))
    weights = page.locator("#att-view .att-keys li").evaluate_all("items => items.map(i => i.dataset.weights)")
    return [[float(w) for w in item.split(",")] for item in weights]


def attention_view(page: Page) -> None:
    page.select_option("#att-model", "bert")
    page.fill("#att-text", "To be, or not to be.")
    page.fill("#att-text-b", "That is the question.")
    body = submit(page, "attention-form", "/v1/attention")
    tokens = body["tokens"]
    assert page.locator("#att-view .att-queries li").all_inner_texts() == tokens
    assert page.locator("#att-view .att-keys li").all_inner_texts() == tokens
    page.select_option("#att-layer", "1")
    page.select_option("#att-head", "all")
    expected = [[body["attention"][1][h][3][k] for h in range(len(body["heads"]))] for k in range(len(tokens))]
    assert hover_weights(page, 3) == expected  # exactly the numbers the API sent
    page.select_option("#att-head", "0")
    assert hover_weights(page, 5) == [[row] for row in body["attention"][1][0][5]]
    expect(page.locator("#att-view .att-keys li.segment-1").first).to_have_text(tokens[body["segment_ids"].index(1)])

    page.select_option("#att-model", "gpt")
    expect(page.locator("#att-text-b-label")).to_be_hidden()
    page.fill("#att-text", "ROMEO:\nBut soft")
    body = submit(page, "attention-form", "/v1/attention")
    page.select_option("#att-layer", "0")
    page.select_option("#att-head", "1")
    shown = hover_weights(page, 2)
    assert shown == [[w] for w in body["attention"][0][1][2]]
    assert all(w == [0] for w in shown[3:])  # causal: nothing after the hovered token

    page.select_option("#att-model", "seq2seq-zh-en")
    page.fill("#att-text", "我们明天见。")
    body = submit(page, "attention-form", "/v1/attention")
    expect(page.locator("#att-meta")).to_contain_text(body["model"])
    page.select_option("#att-kind", "cross")
    page.select_option("#att-head", "all")
    assert page.locator("#att-view .att-queries li").all_inner_texts() == body["target_tokens"]
    assert page.locator("#att-view .att-keys li").all_inner_texts() == body["tokens"]
    heads = range(len(body["heads"]))
    assert hover_weights(page, 0) == [[body["cross_attention"][0][h][0][k] for h in heads]
                                      for k in range(len(body["tokens"]))]


PANELS: dict[str, Callable[[Page], None]] = {
    "similar words": similar_words,
    "translation": translation,
    "fill-mask": fill_mask,
    "next sentence": next_sentence,
    "generation": generation,
    "classification": classification,
    "attention": attention_view,
}


@pytest.mark.parametrize("panel", PANELS)
def test_panel_shows_results(page: Page, panel: str):
    PANELS[panel](page)
    expect(page.locator(".error:visible")).to_have_count(0)


def test_every_panel_together_screenshot(page: Page, tmp_path: Path):
    for run in PANELS.values():
        run(page)
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"playground screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_an_error_shows_the_services_detail(page: Page, server: str):
    page.fill("#fm-text", "There is no mask here.")
    page.click("#fill-mask-form button[type=submit]")
    alert = page.locator("#fill-mask-form + .error")
    expect(alert).to_contain_text("Error 422")
    # a field's error, shown as "field: message"
    [error] = httpx.post(server + "/v1/fill-mask", json={"text": "There is no mask here."}, timeout=30).json()["detail"]
    expect(alert.locator(".detail")).to_have_text(f"text: {error['msg']}")
    expect(alert.locator(".detail")).to_contain_text("[MASK]")
    expect(page.locator("#fm-results .mask")).to_have_count(0)


def test_panels_say_when_their_model_is_not_loaded(browser: playwright_api.Browser, empty_client: httpx.Client):
    page, errors = open_playground(browser, str(empty_client.base_url).rstrip("/"))
    try:
        expect(page.locator("#models-status")).to_contain_text("No models are loaded")
        expect(page.locator("#panel-word2vec .notice")).to_contain_text("No word2vec model is loaded")
        page.click("#most-similar-form button[type=submit]")
        alert = page.locator("#most-similar-form + .error")
        expect(alert).to_contain_text("Error 503")
        expect(alert).to_contain_text("python -m training word2vec")
        assert not errors
    finally:
        page.context.close()


def test_api_key_typed_into_the_page_is_sent(browser: playwright_api.Browser, checkpoint_dir: Path,
                                              tmp_path: Path):
    server = Service(checkpoint_dir, tmp_path / "server.log", API_KEY="s3cret")
    try:
        page, errors = open_playground(browser, server.url)  # the page itself needs no key
        expect(page.locator("#models-status")).to_contain_text("needs an API key")
        page.fill("#api-key", "s3cret")
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#models-status")).to_contain_text("models loaded")
        similar_words(page)
        assert not errors
        page.context.close()
    finally:
        server.stop()
