"""GPT model, sampling and trainer: shapes, masking, the KV cache, sampling rules, a tiny training run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import find_checkpoints, load_checkpoint
from models.gpt import GPT, GPTConfig, KVCache, sinusoidal_positions
from models.pipelines.text_generation import TextGenerator, load
from models.sampling import (
    SamplingParams,
    TextAssembler,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    sample_next,
)
from models.tokenizers import ByteBPETokenizer, CharTokenizer
from training import gpt as trainer
from training import loop, text
from training.cli import build_parser
from training.common import weight_decay_groups

from . import reference
from .conftest import ROOT, interrupted_after_saving

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n") * 40


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    """These models are tiny: a second thread only adds synchronisation, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(position: str = "learned", block_size: int = 32, vocab_size: int = 50) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                       position=position)
    return GPT(config).eval()


# ---- the model ------------------------------------------------------------------------------------


def test_forward_shapes_and_initial_loss_near_uniform() -> None:
    model = small()
    idx = torch.randint(0, 50, (3, 20))
    logits, loss = model(idx, torch.randint(0, 50, (3, 20)))
    assert logits.shape == (3, 20, 50)
    assert loss.shape == ()
    assert abs(loss.item() - math.log(50)) < 0.3  # small init: close to a uniform guess
    last, no_loss = model(idx)
    assert last.shape == (3, 1, 50) and no_loss is None
    assert torch.allclose(last[:, 0], logits[:, -1], atol=1e-5)


def test_attention_is_causal() -> None:
    model = small()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50
    a, _ = model(idx, idx)
    b, _ = model(changed, changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_bf16_autocast_keeps_attention_in_fp32_and_agrees_with_fp32() -> None:
    model = small()
    idx = torch.randint(0, 50, (2, 16))
    exact, _ = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, loss = model(idx, idx)
    assert fast.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.allclose(fast.float(), exact, atol=0.05)


def test_output_layer_is_tied_to_token_embedding() -> None:
    model = small()
    assert model.lm_head.weight is model.wte.weight
    assert "lm_head.weight" not in model.weights()


def test_sinusoidal_positions_follow_the_formula() -> None:
    table = sinusoidal_positions(10, 8)
    pos, i = 7, 2  # dimensions 2i and 2i+1
    angle = pos / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    model = small("sinusoidal")
    assert "wpe_table" not in model.state_dict()  # rebuilt from the config, never stored
    assert not hasattr(model, "wpe")


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_kv_cache_matches_full_recompute(position: str) -> None:
    model = small(position)
    idx = torch.randint(0, 50, (2, 24))
    full, _ = model(idx, idx)
    cache = KVCache(model.config, batch=2)
    logits, _ = model(idx[:, :10], kv_cache=cache)  # prompt
    assert torch.allclose(logits[:, 0], full[:, 9], atol=1e-5)
    logits, _ = model(idx[:, 10:14], kv_cache=cache)  # several tokens after cached ones
    assert torch.allclose(logits[:, 0], full[:, 13], atol=1e-5)
    for t in range(14, 24):  # one at a time
        logits, _ = model(idx[:, t:t + 1], kv_cache=cache)
        assert torch.allclose(logits[:, 0], full[:, t], atol=1e-5)
    assert cache.length == 24


def test_cached_greedy_generation_equals_recomputing() -> None:
    model = small()
    prompt = torch.randint(0, 50, (2, 5))
    greedy = SamplingParams(temperature=0.0)
    cached = model.generate(prompt, 20, greedy, use_cache=True)
    recomputed = model.generate(prompt, 20, greedy, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert cached.shape == (2, 25)


def test_session_runs_past_the_context_by_refilling() -> None:
    model = small(block_size=16)
    session, logits = model.start(list(range(20)), rows=2)  # prompt longer than the context
    assert logits.shape == (2, 50)
    for _ in range(40):
        logits = session.step(torch.argmax(logits, dim=-1))
        assert session.cache.length <= 16
    session.keep(torch.tensor([1]))
    assert session.step(torch.tensor([3])).shape == (1, 50)


def test_optimizer_decays_matrices_only() -> None:
    model = small()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.1), lr=1e-3)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_loss_drops_when_training_on_a_repeated_text() -> None:
    tokenizer = CharTokenizer.train([TEXT])
    data = torch.tensor(tokenizer.encode(TEXT))
    model = small(vocab_size=tokenizer.vocab_size).train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.0), lr=3e-3, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        offsets = torch.randint(len(data) - 33, (8,), generator=generator)
        x, y = text.windows(data, offsets, 32, torch.device("cpu"))
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


# ---- sampling ---------------------------------------------------------------------------------------


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[False, False, True, True, True]]
    probs = torch.softmax(logits, -1)[0]  # about .64 .24 .09 .03 .01
    kept = ~torch.isinf(filter_top_p(logits, 0.8))
    assert kept.tolist() == [[True, True, False, False, False]]
    assert probs[0] < 0.8 <= probs[0] + probs[1]
    assert (~torch.isinf(filter_top_p(logits, 0.5))).sum() == 1  # the top token always stays


def test_repetition_penalty_lowers_seen_tokens_either_sign() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0]]


def test_zero_temperature_is_greedy_and_seeds_repeat() -> None:
    logits = torch.randn(4, 30)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=0.0)), logits.argmax(-1))
    params = SamplingParams(temperature=1.0, top_k=10)
    a = sample_next(logits, params, torch.Generator().manual_seed(5))
    b = sample_next(logits, params, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sampling_params_reject_out_of_range_values() -> None:
    for bad in ({"temperature": -1}, {"top_p": 0.0}, {"top_k": -1}, {"repetition_penalty": 0.0},
                {"max_new_tokens": 0}, {"stop": ("",)}, {"n": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_stop_sequence_is_cut_and_never_partly_shown() -> None:
    tokenizer = CharTokenizer.train(["abcdefgh\n"])
    assembler = TextAssembler(tokenizer, stop=("\n\n", "def"))
    shown = "".join(assembler.push(i) for i in tokenizer.encode("abcd"))
    assert shown == "abc"  # "d" might begin "def": held back
    shown += assembler.push(tokenizer.encode("e")[0])
    assert shown == "abc"
    shown += assembler.push(tokenizer.encode("f")[0])
    assert assembler.stopped and shown + assembler.finish() == "abc"


def test_held_back_text_is_released_when_no_stop_follows() -> None:
    tokenizer = CharTokenizer.train(["abcdefgh"])
    assembler = TextAssembler(tokenizer, stop=("xyz", "de"))
    shown = "".join(assembler.push(i) for i in tokenizer.encode("abcd"))
    shown += assembler.finish()
    assert shown == "abcd" and not assembler.stopped


def test_split_utf8_characters_wait_for_their_last_byte() -> None:
    tokenizer = ByteBPETokenizer.train(["plain ascii text only"], vocab_size=260)
    text = "é—ü"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)  # byte-level: several tokens per character
    assembler = TextAssembler(tokenizer)
    pieces = [assembler.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + assembler.finish() == text


class ScriptedSession:
    """A stand-in model that always predicts the next token of a fixed script."""

    def __init__(self, script: list[int], vocab: int, rows: int):
        self.script, self.vocab, self.position = script, vocab, [0] * rows

    def logits(self) -> torch.Tensor:
        out = torch.full((len(self.position), self.vocab), -1e9)
        for row, p in enumerate(self.position):
            out[row, self.script[min(p, len(self.script) - 1)]] = 0.0
        return out

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position = [p + 1 for p in self.position]
        return self.logits()

    def keep(self, rows: torch.Tensor) -> None:
        self.position = [self.position[r] for r in rows.tolist()]


class ScriptedModel:
    def __init__(self, script: list[int], vocab: int):
        self.script, self.vocab = script, vocab

    def start(self, prompt: list[int], rows: int) -> tuple[ScriptedSession, torch.Tensor]:
        session = ScriptedSession(self.script, self.vocab, rows)
        return session, session.logits()


def scripted(text: str, eos: bool = False) -> TextGenerator:
    tokenizer = ByteBPETokenizer.train([text], vocab_size=300)
    script = tokenizer.encode(text) + ([tokenizer.eos_id] if eos else [])
    return TextGenerator(ScriptedModel(script, tokenizer.vocab_size), tokenizer)


class PreferenceSession:
    """Stand-in rows over a few letter tokens ranked a fixed way, each row preferring its own script's next
    token: a repetition penalty (dividing a seen token's positive logit) decides between them."""

    def __init__(self, scripts: list[list[int]], letters: list[int], vocab: int):
        self.scripts, self.letters, self.vocab, self.position = scripts, letters, vocab, 0

    def logits(self) -> torch.Tensor:
        out = torch.full((len(self.scripts), self.vocab), -10.0)
        out[:, self.letters] = torch.linspace(2.0, 1.0, len(self.letters))
        for row, script in enumerate(self.scripts):
            out[row, script[min(self.position, len(script) - 1)]] = 3.5
        return out

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position += 1
        return self.logits()

    def keep(self, rows: torch.Tensor) -> None:
        self.scripts = [self.scripts[r] for r in rows.tolist()]


class PreferenceModel:
    def __init__(self, scripts: list[list[int]], letters: list[int], vocab: int):
        self.scripts, self.letters, self.vocab = scripts, letters, vocab

    def start(self, prompt: list[int], rows: int) -> tuple[PreferenceSession, torch.Tensor]:
        session = PreferenceSession(self.scripts, self.letters, self.vocab)
        return session, session.logits()


def test_dropping_a_finished_sample_keeps_each_other_samples_repetition_history() -> None:
    tokenizer = ByteBPETokenizer.train([TEXT], vocab_size=300)
    letters = [tokenizer.encode(c)[0] for c in "abcdefgh"]
    a, b, c = letters[:3]
    short, long = [a, tokenizer.eos_id], [b, b, c, b, b, c, b, b]

    def preferring(*scripts: list[int]) -> TextGenerator:
        return TextGenerator(PreferenceModel(list(scripts), letters, tokenizer.vocab_size), tokenizer)

    penalised = SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=3.0)
    together = preferring(short, long).generate("x", dataclasses.replace(penalised, n=2)).results
    alone = preferring(long).generate("x", penalised).results
    assert (together[0].text, together[0].finish_reason) == ("a", "stop")  # dropped after its second token
    assert together[1] == alone[0]
    unpenalised = preferring(long).generate("x", dataclasses.replace(penalised, repetition_penalty=1.0)).results
    assert unpenalised[0].text != alone[0].text  # the penalty (so each row's own history) decides the text


def test_generator_finish_reasons_and_usage() -> None:
    generator = scripted("one two three four")
    out = generator.generate("x", SamplingParams(max_new_tokens=50, stop=(" three",), n=2))
    assert [r.text for r in out.results] == ["one two"] * 2
    assert [r.finish_reason for r in out.results] == ["stop"] * 2
    assert out.prompt_tokens == 1 and out.completion_tokens == sum(r.tokens for r in out.results)
    short = generator.generate("x", SamplingParams(max_new_tokens=2))
    assert short.results[0].finish_reason == "length" and short.results[0].tokens == 2
    ended = scripted("one two", eos=True).generate("x", SamplingParams(max_new_tokens=50))
    assert ended.results[0].text == "one two" and ended.results[0].finish_reason == "stop"


def test_streamed_greedy_text_is_greedy_decoding_by_full_recomputation() -> None:
    tokenizer = CharTokenizer.train([TEXT])
    model = small(vocab_size=tokenizer.vocab_size)  # 32 positions: prompt and output fit, so nothing is cut
    recomputed = reference.LanguageModel(tokenizer, lambda ids: model(torch.tensor([ids]))[0][0, -1],
                                         tokenizer.eos_id)
    expected, tokens, _ = reference.greedy_continuation(recomputed, "ROMEO:", 24)
    generator = TextGenerator(model, tokenizer)
    pieces = list(generator.stream("ROMEO:", SamplingParams(max_new_tokens=24, temperature=0.0)))
    assert "".join(p.text for p in pieces) == expected
    assert (pieces[-1].finish_reason, pieces[-1].tokens) == ("length", tokens)
    stop = expected[10:12]
    cut = list(generator.stream("ROMEO:", SamplingParams(max_new_tokens=24, temperature=0.0, stop=(stop,))))
    assert "".join(p.text for p in cut) == expected[:expected.find(stop)]
    assert cut[-1].finish_reason == "stop"


# ---- tokenizers ------------------------------------------------------------------------------------


def test_tokenizers_round_trip_and_serialise() -> None:
    chars = CharTokenizer.train([TEXT])
    assert chars.decode(chars.encode(TEXT)) == TEXT
    assert chars.encode("Z€")[1] == 0  # unseen character: the unknown id
    assert CharTokenizer.from_json(chars.to_json()).itos == chars.itos
    bpe = ByteBPETokenizer.train([TEXT], vocab_size=300)
    assert bpe.decode(bpe.encode(TEXT)) == TEXT
    assert bpe.decode(bpe.encode("Ünïcödé ✓")) == "Ünïcödé ✓"
    assert bpe.eos_id is not None
    assert ByteBPETokenizer.from_json(bpe.to_json()).encode(TEXT) == bpe.encode(TEXT)


# ---- the trainer ---------------------------------------------------------------------------------------


def test_predicted_chars_counts_every_token_but_the_first() -> None:
    chars = CharTokenizer.train(["ab\n"])
    docs = ["ab\n", "ba\n"]
    ids = text.encode(chars, docs)
    assert chars.decode(ids.tolist()) == "ab\n\nba\n"
    assert text.predicted_chars(chars, docs, ids) == len(ids) - 1
    bpe = ByteBPETokenizer.train(docs, vocab_size=260)
    ids = text.encode(bpe, docs)
    assert (ids == bpe.eos_id).sum() == 1
    assert text.predicted_chars(bpe, docs, ids) == 6 - len(bpe.decode(ids[:1].tolist()))


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["gpt", *argv])


def test_training_writes_a_servable_checkpoint_and_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "plays.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    common = ("--profile", "tiny", "--out", str(tmp_path / "ck"), "--corpus", str(corpus), "--tokenizer", "char",
              "--block-size", "32", "--batch-size", "8", "--max-seconds", "0", "--precision", "fp32", "--force")
    [path] = trainer.train(parse(*common, "--max-steps", "20"))
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["id"] == "gpt" and checkpoint.config["tokenizer"]["type"] == "char"
    metrics = checkpoint.metrics
    # One token per character: bits per character is the loss in bits (up to the one separator).
    assert metrics["val_bpc"] == pytest.approx(metrics["val_loss"] / math.log(2), rel=1e-3)
    assert metrics["steps"] == 20 and metrics["tokens_per_second"] > 0
    generator = load(checkpoint, torch.device("cpu"))
    text = generator.generate("ROMEO:", SamplingParams(max_new_tokens=10, seed=0)).results[0].text
    assert len(text) == 10

    state = loop.state_dir(tmp_path / "ck", "gpt")
    assert (state / "state.pt").is_file()
    [path] = trainer.train(parse(*common, "--max-steps", "30", "--resume"))
    history = json.loads((state / "history.json").read_text())
    assert history["step"] == list(range(1, 31))
    assert load_checkpoint(path).metrics["steps"] == 30


def test_resume_after_an_interruption_repeats_the_uninterrupted_run(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "plays.txt"
    corpus.write_text(TEXT, encoding="utf-8")

    def run(out: str, *extra: str) -> list[float]:
        trainer.train(parse("--profile", "tiny", "--out", str(tmp_path / out), "--corpus", str(corpus),
                            "--tokenizer", "char", "--block-size", "16", "--batch-size", "4", "--max-seconds", "0",
                            "--precision", "fp32", "--warmup-steps", "2", "--max-steps", "12",
                            "--eval-interval", "6", "--eval-batches", "1", "--force", *extra))
        return json.loads((loop.state_dir(tmp_path / out, "gpt") / "history.json").read_text())["loss"]

    straight = run("a")
    with interrupted_after_saving(monkeypatch, lambda state: True):
        run("b")  # stops right after the state of step 6 is written
    assert torch.load(loop.state_dir(tmp_path / "b", "gpt") / "state.pt", weights_only=True)["step"] == 6
    resumed = run("b", "--resume")
    assert resumed == pytest.approx(straight, abs=1e-5)


def test_a_run_killed_mid_training_leaves_a_whole_checkpoint_and_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "plays.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "ck"
    flags = ("--profile", "tiny", "--out", str(out), "--corpus", str(corpus), "--tokenizer", "char",
             "--block-size", "32", "--batch-size", "8", "--max-seconds", "0", "--precision", "fp32",
             "--eval-interval", "5", "--eval-batches", "1", "--force")
    state = loop.state_dir(out, "gpt") / "state.pt"
    with open(tmp_path / "train.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "training", "gpt", *flags, "--max-steps", "100000"],
                                   cwd=ROOT, env={**os.environ, "PROGRESS": "0"}, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while not state.is_file():
                assert process.poll() is None, (tmp_path / "train.log").read_text()
                assert time.monotonic() < deadline, "no training state saved in 120 s"
                time.sleep(0.05)
        finally:
            process.kill()  # SIGKILL: no handler runs, whatever it was writing stays as it is
            process.wait()

    saved = torch.load(state, weights_only=True)["step"]
    assert saved > 0 and saved % 5 == 0
    # The service lists only whole checkpoints: the last evaluated one, written before its state.
    assert find_checkpoints(out) == [out / "gpt"]
    served = load_checkpoint(out / "gpt")
    assert served.metrics["steps"] >= saved and served.metrics["steps"] % 5 == 0
    load(served, torch.device("cpu"))

    [path] = trainer.train(parse(*flags, "--max-steps", str(saved + 10), "--resume"))
    history = json.loads((state.parent / "history.json").read_text())
    assert history["step"] == list(range(1, saved + 11))
    assert load_checkpoint(path).metrics["steps"] == saved + 10
    load(load_checkpoint(path), torch.device("cpu"))
    assert sorted(p.name for p in out.iterdir()) == [".gpt-train-state", "gpt"]  # no staging left over


def test_sampling_survives_vanishing_top_p_and_temperature():
    from models.sampling import SamplingParams, make_generator, sample_next

    logits = torch.tensor([[2.0, 1.0, -3.0, 0.5]])
    for params in (SamplingParams(top_p=5e-324), SamplingParams(temperature=5e-324),
                   SamplingParams(temperature=1e-30, top_p=1e-30, repetition_penalty=0.01)):
        token = sample_next(logits, params, make_generator(0), seen=torch.ones_like(logits, dtype=torch.bool))
        assert token.tolist() == [0], params
