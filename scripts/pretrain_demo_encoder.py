"""Pretrain the shipped demo encoder ``demo/tiny-mbert``: a tiny multilingual BERT (masked LM).

The demo fine-tunes a *frozen pretrained* encoder, like a real run would fine-tune mBERT or
XLM-R, so it needs a base that already knows the five demo languages. This script makes one:

1. Build the pretraining corpus: the demo training texts of every language plus extra unlabeled
   sentences from the same generator (``scripts/make_demo_data.py``; never shipped, regenerated
   here), so the three small languages get enough text to learn representations.
2. Build a WordPiece tokenizer for that corpus (frequent whole words + characters, counted here
   for reproducibility; normalisation, pre-tokenisation and the model from the ``tokenizers``
   library; lowercased, accents kept: the Yoruba-like lexicon uses dotted vowels) and wrap it as
   a ``BertTokenizerFast``.
3. Pretrain a tiny BERT with masked LM using *our own* JAX model
   (``langtune_jax.models.bert``, built from a Hugging Face config dict), optax AdamW and
   ``nnx.jit``. Rows pack sentences of one language up to ``seq_len`` tokens; languages are
   sampled with probability proportional to ``n_lang ** alpha`` (alpha 0.5: mBERT/XLM-R-style
   smoothing, so small languages are seen more often than their share of the text). A second
   loss makes ``[CLS]`` summarise its row: the same MLM head applied to ``[CLS]`` predicts the
   row's words (a bag-of-words stand-in for BERT's next-sentence prediction), so the pooled
   ``[CLS]`` that sequence classification reads carries the sentence content.
4. Save model and tokenizer in the Hugging Face layout with
   ``langtune_jax.models.save_pretrained`` and ``tokenizer.save_pretrained``; the demo then loads
   the folder through the same code path as a Hub checkpoint.

Everything is seeded; on CPU the result is deterministic (same seed, same bytes up to XLA's
CPU determinism). Usage::

    python scripts/pretrain_demo_encoder.py                 # ~8 minutes on 2 CPU cores
    python scripts/pretrain_demo_encoder.py --steps 50 --out /tmp/enc   # a quick smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)  # ids follow SPECIAL_TOKENS (the trainer adds them first)
# Extra unlabeled sentences per language, on top of the labelled training texts. Still skewed
# towards the big languages, as real pretraining corpora are, but every language gets thousands.
UNLABELED_SIZES = {"en": 6000, "es": 4000, "sw": 2500, "yo": 2500, "qu": 2500}


@dataclasses.dataclass
class PretrainConfig:
    """Settings of the demo pretraining run; the defaults made the shipped ``demo/tiny-mbert``.

    Attributes:
      hidden_size / num_hidden_layers / num_attention_heads / intermediate_size: the BERT shape
        (4 x 128, 4 heads: ~1M encoder parameters, a few MB on disk with the embeddings).
      max_position_embeddings: longest input the encoder accepts (tokens).
      vocab_size: WordPiece vocabulary target (the trainer may stop below it on a small corpus).
      steps / batch_size / seq_len: optimisation budget; 64 x 64 tokens per step.
      learning_rate / warmup_steps / weight_decay: AdamW with linear warm-up then linear decay.
      mask_prob: share of tokens chosen for prediction (80% -> [MASK], 10% random, 10% kept).
      alpha: language sampling exponent (probability proportional to corpus size ** alpha).
      summary_weight: weight of the [CLS] summary loss (the MLM head applied to [CLS] predicts
        the words of the row). It replaces BERT's next-sentence prediction, which is what makes
        [CLS] -- the input of the sequence-classification pooler -- carry sentence content;
        without it [CLS] is nearly constant and a LoRA classifier over it does not learn.
      seed: seeds the data stream, masking and parameter init.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 128
    vocab_size: int = 3000
    steps: int = 3600
    batch_size: int = 64
    seq_len: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    alpha: float = 0.5
    summary_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"PretrainConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"PretrainConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(
                f"PretrainConfig.seq_len ({self.seq_len}) exceeds max_position_embeddings "
                f"({self.max_position_embeddings})"
            )
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"PretrainConfig.mask_prob must be in (0, 1), got {self.mask_prob}")

    def hf_config(self, vocab_size: int) -> dict:
        """The Hugging Face ``BertConfig`` dict of the model (``vocab_size`` = tokenizer's)."""
        return {
            "model_type": "bert",
            "architectures": ["BertForMaskedLM"],
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            # Pretrained without dropout (below), so the config says so: fine-tuning a frozen
            # encoder under dropout it never saw corrupts its features and stalls LoRA.
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": 2,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "pad_token_id": PAD,
        }


def _data_module():
    """Import ``scripts/make_demo_data.py`` (``scripts/`` is not a package)."""
    name = "make_demo_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_corpus(data_dir: Path = ROOT / "demo/data", seed: int | None = None) -> dict:
    """Pretraining text per language: the demo training split plus regenerated unlabeled text.

    Returns:
      ``{language: [sentence, ...]}`` in a fixed order.
    """
    data = _data_module()
    seed = data.SEED if seed is None else seed
    extra = data.unlabeled_corpus(UNLABELED_SIZES, seed)
    corpus = {}
    for lang in data.LANGUAGES:
        path = data_dir / "train" / f"{lang}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run scripts/make_demo_data.py first")
        with path.open(encoding="utf-8") as f:
            train = [json.loads(line)["text"] for line in f]
        corpus[lang] = train + extra[lang]
    return corpus


def train_tokenizer(texts: list[str], vocab_size: int):
    """Build a lowercasing WordPiece tokenizer from ``texts``; return a ``BertTokenizerFast``.

    The vocabulary is counted here, not by ``tokenizers``' ``WordPieceTrainer``: that trainer
    breaks ties between equally frequent merges in hash-map order, so two runs on the same corpus
    give different vocabularies, and the shipped model must be reproducible. Vocabulary: the
    special tokens, every character (word-initial and ``##`` continuation), then the most frequent
    whole words (seen at least twice) up to ``vocab_size``, ties broken alphabetically. Rare words
    fall back to characters through WordPiece's greedy longest match. Normalisation and
    pre-tokenisation are ``tokenizers``' BERT components.

    Args:
      texts: the training sentences.
      vocab_size: the most tokens the vocabulary may hold, special tokens included.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    # strip_accents=False: the accents (yo: ẹ ọ ṣ) are letters of the lexicon, not decoration.
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(w for w, _ in words)
    chars = sorted({c for w in counts for c in w})
    vocab_list = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    frequent = sorted(
        (w for w, n in counts.items() if n >= 2 and len(w) > 1), key=lambda w: (-counts[w], w)
    )
    vocab_list += frequent[: max(vocab_size - len(vocab_list), 0)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)],
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=True,
        strip_accents=False,
        model_max_length=128,
    )


class MlmBatches:
    """Deterministic masked-LM batches: batch ``k`` is a pure function of ``(seed, k)``.

    Each row is one language (drawn with probability proportional to ``n_sentences ** alpha``)
    and packs random sentences of that language as ``[CLS] s1 [SEP] s2 [SEP] ...`` up to
    ``seq_len`` tokens (the last sentence is cut). BERT masking: ``P = ceil(mask_prob * seq_len)``
    non-special positions per row are targets; of those 80% become ``[MASK]``, 10% a random
    token, 10% stay. Targets are also given as gathered ``positions`` / ``target_ids`` ``[B, P]``
    (BERT's ``max_predictions_per_seq``) so the loss projects only those onto the vocabulary.
    """

    def __init__(self, corpus: dict, tokenizer, cfg: PretrainConfig):
        self.cfg = cfg
        self.langs = list(corpus)
        self.ids = {
            lang: tokenizer(texts, add_special_tokens=False)["input_ids"]
            for lang, texts in corpus.items()
        }
        sizes = np.array([len(corpus[lang]) for lang in self.langs], dtype=np.float64)
        weights = sizes**cfg.alpha
        self.probs = weights / weights.sum()
        self.vocab_size = len(tokenizer)
        self.num_predictions = int(np.ceil(cfg.mask_prob * cfg.seq_len))

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7, k]))
        B, T, P = cfg.batch_size, cfg.seq_len, self.num_predictions
        input_ids = np.full((B, T), PAD, dtype=np.int32)  # [B, T]
        for b in range(B):
            lang = self.langs[int(rng.choice(len(self.langs), p=self.probs))]
            pool = self.ids[lang]
            row = [CLS]
            while len(row) < T:
                row += list(pool[int(rng.integers(len(pool)))]) + [SEP]
            input_ids[b] = row[:T]
        positions = np.zeros((B, P), dtype=np.int32)  # [B, P]
        for b in range(B):
            candidates = np.flatnonzero(input_ids[b] >= len(SPECIAL_TOKENS))
            positions[b] = np.sort(rng.choice(candidates, size=P, replace=False))
        target_ids = np.take_along_axis(input_ids, positions, axis=1)  # [B, P]
        action = rng.random((B, P))
        random_ids = rng.integers(len(SPECIAL_TOKENS), self.vocab_size, size=(B, P))
        replaced = np.where(action < 0.8, MASK, np.where(action < 0.9, random_ids, target_ids))
        masked = input_ids.copy()
        np.put_along_axis(masked, positions, replaced.astype(np.int32), axis=1)
        labels = np.full((B, T), -100, dtype=np.int32)  # [B, T] (-100: not a target)
        np.put_along_axis(labels, positions, target_ids, axis=1)
        return {
            "input_ids": masked,
            "attention_mask": np.ones((B, T), dtype=np.int32),
            "labels": labels,
            "positions": positions,
            "target_ids": target_ids.astype(np.int32),
            "original_ids": input_ids,  # unmasked, for the [CLS] summary objective
        }


def pretrain(cfg: PretrainConfig, batches: MlmBatches, vocab_size: int, log_every: int = 100):
    """Pretrain ``langtune_jax.models.bert``'s masked-LM model; returns ``(model, losses)``.

    The step is one ``nnx.jit`` function over the model and an ``nnx.Optimizer``; the loss is the
    mean cross-entropy over the target positions of each batch plus ``summary_weight`` times the
    [CLS] bag-of-words cross-entropy.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from langtune_jax.models import bert

    model = bert.from_hf_config(
        cfg.hf_config(vocab_size),
        "masked-lm",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1),
    )
    # Dropout stays off (eval mode) while pretraining: a few hundred steps over this corpus do not
    # overfit, and drawing dropout masks is a large share of a CPU step. The saved config records
    # dropout 0.0 accordingly.
    model.eval()
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
            optax.linear_schedule(cfg.learning_rate, 0.0, max(cfg.steps - cfg.warmup_steps, 1)),
        ],
        [cfg.warmup_steps],
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=cfg.weight_decay),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, batch):
        hidden = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        head = model.cls.predictions

        def vocab_logits(h):  # BertForMaskedLM's head: transform, tied decoder, bias
            logits = model.bert.embeddings.word_embeddings.attend(head.transform(h))
            return logits + head.bias[...]

        # Masked LM on the target positions only: projecting all B*T hidden states onto the
        # vocabulary would cost a third of the step for 15% of the rows.
        h = jnp.take_along_axis(hidden, batch["positions"][..., None], axis=1)  # [B, P, D]
        mlm = optax.softmax_cross_entropy_with_integer_labels(vocab_logits(h), batch["target_ids"])
        # [CLS] summary: the same head applied to [CLS] predicts the row's words (bag of words).
        cls_logp = jax.nn.log_softmax(vocab_logits(hidden[:, 0]))  # [B, V]
        ids = batch["original_ids"]  # [B, T]
        words = ids >= len(SPECIAL_TOKENS)
        bow = -jnp.take_along_axis(cls_logp, ids, axis=1)  # [B, T]
        bow = jnp.sum(bow * words) / jnp.maximum(words.sum(), 1)
        return mlm.mean() + cfg.summary_weight * bow

    @nnx.jit
    def train_step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss

    losses = []
    start = time.time()
    for k in range(cfg.steps):
        batch = {key: jnp.asarray(v) for key, v in batches(k).items()}
        losses.append(float(train_step(model, optimizer, batch)))
        if log_every and (k + 1) % log_every == 0:
            recent = np.mean(losses[-log_every:])
            print(
                f"step {k + 1:>5}/{cfg.steps}  loss (mlm + summary) {recent:.3f}  {time.time() - start:.0f}s"
            )
    return model, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo/tiny-mbert")
    parser.add_argument("--data", type=Path, default=ROOT / "demo/data")
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--seed", type=int, default=PretrainConfig.seed)
    args = parser.parse_args(argv)
    cfg = PretrainConfig(steps=args.steps, seed=args.seed)

    from langtune_jax.models import save_pretrained

    corpus = build_corpus(args.data)
    texts = [t for lang in corpus for t in corpus[lang]]
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    print(f"corpus: {len(texts)} sentences; tokenizer vocab {len(tokenizer)}")
    batches = MlmBatches(corpus, tokenizer, cfg)
    print(
        "language sampling: "
        + ", ".join(f"{k}={p:.2f}" for k, p in zip(batches.langs, batches.probs))
    )
    model, losses = pretrain(cfg, batches, len(tokenizer))
    args.out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, args.out)
    tokenizer.save_pretrained(args.out)
    print(f"final loss {np.mean(losses[-100:]):.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
