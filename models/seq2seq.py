"""RNN encoder–decoder for translation, with and without attention.

The walk of the papers, in one file:

- Cho et al. (2014) / Sutskever et al. (2014): an encoder RNN reads the source and its final state is the
  one fixed vector ``c`` the decoder starts from and reads at every step (``attention="none"``). Every
  source sentence, long or short, has to fit through that vector: the information bottleneck.
- Bahdanau et al. (2015), *additive* attention: before each step the previous decoder state
  ``s_{t-1}`` scores every encoder annotation ``h_j`` with ``v^T tanh(W s_{t-1} + U h_j)``; the softmax
  of those scores, ``alpha_t``, weighs the annotations into a context ``c_t`` the cell then reads.
- Luong et al. (2015), *dot* ``s_t^T h_j`` and *general* ``s_t^T W h_j`` attention: the cell steps first,
  the new state ``s_t`` attends, and the attentional state ``h~_t = tanh(W_c [s_t; c_t])`` is fed back
  into the next step's input ("input feeding").

``alpha_t`` is the alignment the service shows: one row per target token over the source tokens.
The recurrences are torch's ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (encoder, whole sequence at once) and
their one-step cells (decoder); ``models/rnn.py`` writes out their equations.

Chinese is read and written as characters, English as lower-cased words with punctuation split off.
Each side has a frequency-ordered ``WordVocab`` whose first four entries are the special tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.beam import BeamOptions, beam_search, greedy_search
from models.checkpoint import Checkpoint
from models.tokenizers import WordVocab

CELLS = ("rnn", "lstm", "gru")
ATTENTIONS = ("additive", "dot", "general", "none")
DIRECTIONS = ("zh-en", "en-zh")

# ---- tokens and vocabularies ----------------------------------------------------------------------

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIALS))

# Numbers ("1.4", "3-1"), hyphenated and contracted words ("well-known", "it's") stay whole; every
# other non-space character (punctuation, a stray CJK character) becomes a token of its own.
_ENGLISH_TOKEN = re.compile(r"[a-z0-9]+(?:['.\-][a-z0-9]+)*|\S")
_SPACE_BEFORE = re.compile(r" ([.,;:?!%)])")
_SPACE_AFTER = re.compile(r"([(]) ")


def tokenize(text: str, language: str) -> list[str]:
    """Chinese: one token per non-space character. English: lower-cased words and punctuation marks."""
    if language == "zh":
        return [ch for ch in text if not ch.isspace()]
    if language == "en":
        return _ENGLISH_TOKEN.findall(text.lower().replace("\u2019", "'"))
    raise ValueError(f"unsupported language {language!r}")


def detokenize(tokens: Sequence[str], language: str) -> str:
    """Inverse of ``tokenize`` up to case: Chinese characters are joined, English words spaced."""
    if language == "zh":
        return "".join(tokens)
    tokens = ["I" + t[1:] if t == "i" or t.startswith("i'") else t for t in tokens]  # "i'll" -> "I'll"
    text = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", " ".join(tokens)))
    return text[:1].upper() + text[1:]


class Units(Protocol):
    """How one language's text becomes the tokens a model reads or writes, and back."""

    kind: str  # what config["tokenizer"]["units"] records for the language

    def tokens(self, text: str) -> list[str]: ...

    def text(self, tokens: Sequence[str]) -> str: ...


class Characters:
    """Chinese, one token per character."""

    kind = "characters"

    def tokens(self, text: str) -> list[str]:
        return tokenize(text, "zh")

    def text(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)


class ChineseWords:
    """Chinese cut into words by forward maximum matching against a lexicon (the words of the HSK records'
    own segmentation): at each position the longest lexicon word that starts there, else one character."""

    kind = "words"
    file_name = "zh_lexicon.json"

    def __init__(self, lexicon: Iterable[str]):
        self.lexicon = frozenset(w for w in lexicon if w and not any(ch.isspace() for ch in w))
        self.longest = max((len(w) for w in self.lexicon), default=1)

    def tokens(self, text: str) -> list[str]:
        chars = "".join(tokenize(text, "zh"))
        out, i = [], 0
        while i < len(chars):
            n = next((n for n in range(min(self.longest, len(chars) - i), 1, -1) if chars[i:i + n] in self.lexicon), 1)
            out.append(chars[i:i + n])
            i += n
        return out

    def text(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def to_json(self) -> str:
        return json.dumps(sorted(self.lexicon), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ChineseWords:
        return cls(json.loads(text))


class EnglishWords:
    """English, lower-cased words and punctuation marks."""

    kind = "words"

    def tokens(self, text: str) -> list[str]:
        return tokenize(text, "en")

    def text(self, tokens: Sequence[str]) -> str:
        return detokenize(tokens, "en")


class EnglishSubwords:
    """English words cut into byte-pair-encoding units (Sennrich et al., 2016) learned on the training
    side: frequent words stay whole, rare ones become pieces, and a piece that begins a word begins with
    ``▁`` (SentencePiece's mark). The model can then write a word it saw once, or never, from its pieces."""

    kind = "bpe"
    file_name = "en_bpe.json"
    WORD_START = "\u2581"
    # Every letter, digit and common punctuation mark is a unit, seen in training or not, so that no English
    # word is unknown.
    ALPHABET = WORD_START + "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()%$&/"

    def __init__(self, backend: Any):
        self.backend = backend  # a tokenizers.Tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> EnglishSubwords:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        backend = Tokenizer(models.BPE(unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=cls.WORD_START, prepend_scheme="always")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=list(cls.ALPHABET))
        backend.train_from_iterator((" ".join(tokenize(t, "en")) for t in texts), trainer)
        return cls(backend)

    def tokens(self, text: str) -> list[str]:
        words = tokenize(text, "en")
        return self.backend.encode(" ".join(words)).tokens if words else []

    def text(self, tokens: Sequence[str]) -> str:
        return detokenize("".join(tokens).replace(self.WORD_START, " ").split(), "en")

    def to_json(self) -> str:
        return self.backend.to_str()

    @classmethod
    def from_json(cls, text: str) -> EnglishSubwords:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))


def build_vocab(sentences: Iterable[list[str]], min_count: int = 1) -> WordVocab:
    """A ``WordVocab`` of the tokens seen at least ``min_count`` times, the specials first (count 0)."""
    counted = WordVocab.build(sentences, min_count=min_count)
    keep = [(w, c) for w, c in zip(counted.itos, counted.counts, strict=True) if w not in SPECIALS]
    return WordVocab(list(SPECIALS) + [w for w, _ in keep], [0] * len(SPECIALS) + [c for _, c in keep])


def encode(tokens: Sequence[str], vocab: WordVocab) -> list[int]:
    """Token ids, unknown tokens mapped to ``<unk>`` (``WordVocab.encode`` would drop them)."""
    return [vocab.stoi.get(t, UNK_ID) for t in tokens]


def pad_batch(sequences: Sequence[Sequence[int]], device: torch.device | None = None) -> torch.Tensor:
    """(B, longest) ids, right-padded with ``<pad>``."""
    longest = max(len(s) for s in sequences)
    batch = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
    for i, s in enumerate(sequences):
        batch[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return batch.to(device) if device is not None else batch


# ---- configuration --------------------------------------------------------------------------------


@dataclass
class Seq2SeqConfig:
    source_vocab_size: int
    target_vocab_size: int
    embedding_dim: int = 128
    hidden_dim: int = 256
    cell: str = "gru"  # rnn | lstm | gru
    attention: str = "additive"  # additive | dot | general | none
    bidirectional: bool = True
    dropout: float = 0.2
    # The output layer reads the target embeddings (Press & Wolf, 2017): h~ is projected to the embedding
    # size and scored against every target embedding, so a word's input and output vectors are one.
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")


State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h, or (h, c) for the LSTM


def hidden(state: State) -> torch.Tensor:
    """The part of a cell state the decoder attends and predicts with: h (the LSTM's c stays inside)."""
    return state[0] if isinstance(state, tuple) else state


def select(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` of a state (beam search reorders hypotheses with it)."""
    return tuple(s[index] for s in state) if isinstance(state, tuple) else state[index]


# ---- encoder ----------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Annotations ``h_j`` for every source token, plus the summary state the decoder starts from.

    With ``bidirectional`` each annotation concatenates a forward and a backward RNN, so it summarises
    the whole sentence with a focus on token j (Bahdanau et al.); a linear map brings it back to
    ``hidden_dim`` so that all three attention scores compare vectors of one size.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(config.source_vocab_size, config.embedding_dim, padding_idx=PAD_ID)
        self.rnn = rnn(config.embedding_dim, config.hidden_dim, batch_first=True,
                       bidirectional=config.bidirectional)
        self.dropout = nn.Dropout(config.dropout)
        self.annotations = (nn.Linear(directions * config.hidden_dim, config.hidden_dim)
                            if config.bidirectional else nn.Identity())
        # s_0 = tanh(W_s [h_fwd_N; h_bwd_1]): the fixed vector c of the encoder–decoder.
        self.bridge = nn.Linear(directions * config.hidden_dim, config.hidden_dim)
        self.cell_bridge = (nn.Linear(directions * config.hidden_dim, config.hidden_dim)
                            if config.cell == "lstm" else None)

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor]:
        """source (B, S) -> memory (B, S, H), initial decoder state, mask (B, S) True on real tokens."""
        mask = source != PAD_ID
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.dropout(self.embedding(source)), lengths, batch_first=True,
                                      enforce_sorted=False)
        outputs, final = self.rnn(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.size(1))
        memory = self.annotations(outputs)
        h_n, c_n = final if isinstance(final, tuple) else (final, None)
        # (directions, B, H) -> (B, directions * H): last forward state next to the first backward one.
        state: State = torch.tanh(self.bridge(torch.cat(list(h_n), dim=-1)))
        if self.cell_bridge is not None:
            state = (state, self.cell_bridge(torch.cat(list(c_n), dim=-1)))
        return memory, state, mask


# ---- attention ------------------------------------------------------------------------------------


class Attention(nn.Module):
    """score(q, h_j) for every annotation, a masked softmax over j, and the weighted context.

    ``keys`` is computed once per source sentence: for additive attention ``U h_j``, for general
    ``W h_j``, for dot the annotations themselves; each decoder step then costs one query product.
    """

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.W = nn.Linear(dim, dim, bias=False)
            self.U = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, 1, bias=False)
        elif kind == "general":
            self.W = nn.Linear(dim, dim, bias=False)
        elif kind != "dot":
            raise ValueError(f"no attention of kind {kind!r}")

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        if self.kind == "additive":
            return self.U(memory)
        if self.kind == "general":
            return self.W(memory)
        return memory

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, H), keys/memory (B, S, H), mask (B, S) -> context (B, H), alpha (B, S)."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.W(query).unsqueeze(1) + keys)).squeeze(-1)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        # Padding gets no weight: its score is -inf before the softmax, not zeroed after it.
        alpha = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1).to(memory.dtype)
        context = torch.bmm(alpha.unsqueeze(1), memory).squeeze(1)
        return context, alpha


# ---- decoder ----------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """One target token per ``step``; the three papers differ only in when the cell reads the context."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        cell = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[config.cell]
        H = config.hidden_dim
        self.embedding = nn.Embedding(config.target_vocab_size, config.embedding_dim, padding_idx=PAD_ID)
        # Input: y_{t-1} and a context (Cho, Bahdanau) or the previous attentional state (Luong).
        self.cell = cell(config.embedding_dim + H, H)
        self.attention = Attention(config.attention, H) if config.attention != "none" else None
        self.attend_first = config.attention in ("additive", "none")
        self.combine = nn.Linear(2 * H, H)  # h~_t = tanh(W_c [s_t; c_t])
        self.dropout = nn.Dropout(config.dropout)
        if config.tie_embeddings:
            self.project = nn.Linear(H, config.embedding_dim)
            self.out_bias = nn.Parameter(torch.zeros(config.target_vocab_size))
        else:
            self.out = nn.Linear(H, config.target_vocab_size)

    def keys(self, memory: torch.Tensor) -> torch.Tensor | None:
        return self.attention.keys(memory) if self.attention is not None else None

    def step(self, y_prev: torch.Tensor, state: State, feed: torch.Tensor, memory: torch.Tensor,
             keys: torch.Tensor | None, mask: torch.Tensor, fixed: torch.Tensor
             ) -> tuple[State, torch.Tensor, torch.Tensor | None]:
        """y_{t-1} (B,) -> s_t, h~_t (B, H), alpha_t (B, S) or None without attention."""
        e = self.dropout(self.embedding(y_prev))
        alpha = None
        if self.attention is None:
            # Cho et al.: the same fixed vector c at every step, whatever the source length.
            context = fixed
            state = self.cell(torch.cat([e, context], -1), state)
        elif self.attend_first:
            # Bahdanau: s_{t-1} decides where to look, then the cell reads c_t.
            context, alpha = self.attention(hidden(state), keys, memory, mask)
            state = self.cell(torch.cat([e, context], -1), state)
        else:
            # Luong: step first with input feeding, then s_t attends.
            state = self.cell(torch.cat([e, feed], -1), state)
            context, alpha = self.attention(hidden(state), keys, memory, mask)
        attentional = torch.tanh(self.combine(torch.cat([hidden(state), context], -1)))
        return state, attentional, alpha

    def logits(self, attentional: torch.Tensor) -> torch.Tensor:
        """h~ (..., H) -> scores over the target vocabulary (..., V)."""
        if hasattr(self, "project"):
            return F.linear(self.project(self.dropout(attentional)), self.embedding.weight, self.out_bias)
        return self.out(self.dropout(attentional))


# ---- the model --------------------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def start(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                     State, torch.Tensor]:
        """Encode once: memory, attention keys, mask, s_0 and the initial input feed (zeros)."""
        memory, state, mask = self.encoder(source)
        return memory, self.decoder.keys(memory), mask, state, torch.zeros_like(hidden(state))

    def forward(self, source: torch.Tensor, target: torch.Tensor, teacher_forcing: float = 1.0,
                label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """source (B, S), target (B, T) = ``<bos> y_1 .. y_n <eos> <pad>..`` -> logits (B, T-1, V), loss.

        With probability ``1 - teacher_forcing`` (per sentence and step) the decoder reads its own
        previous prediction instead of the reference token, as it must at inference time. With
        ``label_smoothing`` e the loss's target puts 1 - e on the reference and spreads e over the
        vocabulary (Szegedy et al., 2016), so the model is not pushed to certainty on 3,000 sentences.
        """
        memory, keys, mask, state, feed = self.start(source)
        fixed = hidden(state)
        y = target[:, 0]
        states = []
        for t in range(target.size(1) - 1):
            state, feed, _ = self.decoder.step(y, state, feed, memory, keys, mask, fixed)
            states.append(feed)
            y = target[:, t + 1]
            if teacher_forcing < 1.0:
                own = torch.rand(y.shape, device=y.device) >= teacher_forcing
                with torch.no_grad():
                    y = torch.where(own, self.decoder.logits(feed).argmax(-1), y)
        # One projection onto the vocabulary for all steps: the largest matrix is used once, not T times.
        logits = self.decoder.logits(torch.stack(states, dim=1))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target[:, 1:].flatten(), ignore_index=PAD_ID,
                               label_smoothing=label_smoothing)
        return logits, loss

    @torch.no_grad()
    def greedy(self, source: torch.Tensor, max_length: int, min_length: int = 0
               ) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Batched greedy decoding: per sentence, the token ids (no ``<eos>``, at least ``min_length`` of them
        unless ``max_length`` cuts first) and alpha (T, S) or None."""
        memory, keys, mask, state, feed = self.start(source)
        fixed = hidden(state)

        def step(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            nonlocal state, feed
            state, feed, alpha = self.decoder.step(y, state, feed, memory, keys, mask, fixed)
            return self.decoder.logits(feed), alpha

        ids, attention = greedy_search(step, source.size(0), BOS_ID, EOS_ID, max_length, min_length, source.device)
        lengths = mask.sum(1).tolist()
        return ids, [attention[i, :len(row), :lengths[i]] if attention is not None else None
                     for i, row in enumerate(ids)]

    @torch.no_grad()
    def beam_search(self, source: torch.Tensor, options: Sequence[BeamOptions]
                    ) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Batched beam search (``models.beam``), sentence i of source (B, S) as ``options[i]`` says: per
        sentence, the best hypothesis's token ids and its alpha (T, S), or None."""
        memory, keys, mask, state, feed = self.start(source)
        lengths = mask.sum(1).tolist()
        # What each row of a step reads, chosen anew from its parents' rows at every step.
        rows: dict[str, Any] = {"state": state, "feed": feed, "memory": memory, "keys": keys, "mask": mask,
                                "fixed": hidden(state)}
        alphas: list[torch.Tensor | None] = []

        def step(parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            rows.update({name: select(value, parents) if value is not None else None for name, value in rows.items()})
            rows["state"], rows["feed"], alpha = self.decoder.step(
                tokens, rows["state"], rows["feed"], rows["memory"], rows["keys"], rows["mask"], rows["fixed"])
            alphas.append(alpha)
            return torch.log_softmax(self.decoder.logits(rows["feed"]).float(), -1)

        best = beam_search(step, BOS_ID, EOS_ID, options, source.device)
        if self.config.attention == "none":
            return [h.tokens for h in best], [None] * len(best)
        return [h.tokens for h in best], [h.along(alphas, length).float().cpu()
                                          for h, length in zip(best, lengths, strict=True)]


# ---- loading ----------------------------------------------------------------------------------------


def load(checkpoint: Checkpoint, device: torch.device) -> Seq2Seq:
    """The model of a ``seq2seq`` checkpoint from ``config["model"]``, ready for inference on ``device``."""
    model_config = dict(checkpoint.config["model"])
    model_config.pop("direction")
    model = Seq2Seq(Seq2SeqConfig(**model_config))
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()


def load_vocabularies(checkpoint: Checkpoint) -> tuple[WordVocab, WordVocab]:
    """The source and target vocabularies a ``seq2seq`` checkpoint names in ``config["tokenizer"]``."""
    files = checkpoint.config["tokenizer"]["files"]
    return WordVocab.from_file(checkpoint.file(files["source"])), WordVocab.from_file(checkpoint.file(files["target"]))


def default_units(language: str) -> Units:
    """Characters for Chinese, words for English: what a checkpoint that names no other units reads."""
    return Characters() if language == "zh" else EnglishWords()


def load_units(checkpoint: Checkpoint, language: str) -> Units:
    """The units ``config["tokenizer"]["units"]`` names for ``language``, with the file they need."""
    tokenizer = checkpoint.config["tokenizer"]
    kind = tokenizer.get("units", {}).get(language)
    if language == "zh" and kind == ChineseWords.kind:
        return ChineseWords.from_json(checkpoint.file(tokenizer["files"]["zh_lexicon"]).read_text(encoding="utf-8"))
    if language == "en" and kind == EnglishSubwords.kind:
        return EnglishSubwords.from_json(checkpoint.file(tokenizer["files"]["en_bpe"]).read_text(encoding="utf-8"))
    return default_units(language)


def model_config_dict(config: Seq2SeqConfig, direction: str) -> dict:
    """What ``load`` reads back: the config's fields plus the direction."""
    return {**asdict(config), "direction": direction}
