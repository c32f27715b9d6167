"""Build the causal-LM demo assets: a synthetic multilingual instruction set and a tiny Llama.

Everything reuses the made-up languages of ``scripts/make_demo_data.py`` (same lexicons, grammar
and anchors; see ``demo/README.md``): nothing here is real language data.

1. **Instruction set** (``demo/causal/data/{train,validation,test}/<lang>.jsonl``, one JSON object
   per line: ``prompt``, ``response``, ``language``). The instruction is *"put this sentence in
   the past tense"*: the prompt is a sentence in present or future tense followed by
   ``=> past :``, the response is the same sentence with every clause in the past tense. The
   answer is mostly a copy, but the tense marking is each language's own morphology (``en``
   suffix ``-ed``, ``es`` suffix ``-o`` and a moved time word, ``sw`` prefix ``ali-``, ``yo``
   particle ``ti``, ``qu`` suffix ``-rqa``; the future marker has to be removed first), so what
   fine-tuning learns for one language helps another only partly. Train sizes follow the
   classification demo's imbalance (``en`` and ``es`` hold 80%); validation and test have the
   same size per language.
2. **Tokenizer**: WordPiece over the pretraining text (special tokens ``<pad> <unk> <s> </s>``,
   every character, then frequent whole words; counted here so that it is reproducible),
   lowercasing with accents kept, saved as a ``PreTrainedTokenizerFast`` with BOS/EOS/PAD set.
3. **Tiny Llama** (GQA: 4 query heads over 2 key/value heads) pretrained as a plain language
   model on sentences of the five languages with *this project's own* JAX model
   (``langtune_jax.models.llama``), optax AdamW and ``nnx.jit``. Each row packs ``<s> sentence
   </s>`` segments of one language; segments attend only to themselves (segment ids as the
   attention mask) and positions restart per segment, exactly as packed fine-tuning rows do.
   Languages are sampled with probability proportional to ``n ** 0.5``. The base never sees the
   instruction format. Saved in Hugging Face layout (``config.json``, ``model.safetensors``,
   tokenizer files) to ``demo/causal/tiny-llama/``.

Usage::

    python scripts/make_demo_causal.py                      # data + model (~6 min on 2 CPU cores)
    python scripts/make_demo_causal.py --data-only          # only the JSONL files (~2 s)
    python scripts/make_demo_causal.py --steps 20 --out /tmp/causal   # a quick smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
PAD, UNK, BOS, EOS = range(4)
INSTRUCTION = "=> past :"
VALIDATION_SIZE = 50  # per language
TEST_SIZE = 100  # per language
# Plain pretraining sentences per language, skewed like real corpora but enough for every language.
PRETRAIN_SIZES = {"en": 5000, "es": 4000, "sw": 2500, "yo": 2500, "qu": 2500}


def _data_module():
    """Import ``scripts/make_demo_data.py`` (``scripts/`` is not a package)."""
    name = "make_demo_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ----------------------------------------------------------------------------- instruction data


def _with_tense(clauses: list[dict], tenses: list[str]) -> list[dict]:
    out = copy.deepcopy(clauses)
    for clause, tense in zip(out, tenses):
        clause["tense"] = tense
    return out


def instruction_examples(lang: str, n: int, split: str, seed: int, lexicons) -> list[dict]:
    """``n`` past-tense instruction examples of one language and split.

    Returns:
      ``[{"prompt", "response", "language"}]``; prompts end with :data:`INSTRUCTION`.
    """
    data = _data_module()
    split_id = {"train": 0, "validation": 1, "test": 2}[split]
    # Stream 5: disjoint from make_demo_data's streams (1: lexicons, 2: classification splits).
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, 5, data.LANGUAGES.index(lang), split_id])
    )
    renderer = data._Renderer(lang, lexicons[lang])
    rows = []
    for _ in range(n):
        label = str(rng.choice(data.LABELS))
        clauses, conj = data._abstract_sentence(rng, label)
        source = [str(rng.choice(["present", "future"])) for _ in clauses]
        prompt = renderer.sentence(_with_tense(clauses, source), conj)
        response = renderer.sentence(_with_tense(clauses, ["past"] * len(clauses)), conj)
        rows.append({"prompt": f"{prompt} {INSTRUCTION}", "response": response, "language": lang})
    return rows


def write_instruction_splits(out: Path, seed: int) -> dict[str, dict[str, int]]:
    """Write ``out/{train,validation,test}/<lang>.jsonl``; return the sizes written."""
    data = _data_module()
    lexicons = data.build_lexicons(seed)
    sizes = {
        "train": dict(data.TRAIN_SIZES),
        "validation": dict.fromkeys(data.LANGUAGES, VALIDATION_SIZE),
        "test": dict.fromkeys(data.LANGUAGES, TEST_SIZE),
    }
    for split, per_lang in sizes.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for lang in data.LANGUAGES:
            rows = instruction_examples(lang, per_lang[lang], split, seed, lexicons)
            lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
            (out / split / f"{lang}.jsonl").write_text("".join(lines), encoding="utf-8")
    return sizes


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """A lowercasing WordPiece ``PreTrainedTokenizerFast`` for a decoder (BOS/EOS/PAD set).

    Vocabulary: the special tokens, every character (word-initial and ``##`` continuation), then
    the most frequent whole words (seen at least twice), ties broken alphabetically, up to
    ``vocab_size``. Counted here because ``tokenizers``' trainer breaks ties in hash order (not
    reproducible). No post-processor: the data pipeline adds ``<s>``/``</s>`` itself.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # strip_accents=False: the accents (yo: ẹ ọ ṣ) are letters of the lexicon.
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    frequent = sorted(
        (w for w, n in counts.items() if n >= 2 and len(w) > 1), key=lambda w: (-counts[w], w)
    )
    vocab += frequent[: max(vocab_size - len(vocab), 0)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",  # decoder prompts are left-padded for generation
        model_max_length=256,
    )


# ----------------------------------------------------------------------------- pretraining


@dataclasses.dataclass
class PretrainConfig:
    """Settings of the base-model pretraining; the defaults made ``demo/causal/tiny-llama``.

    Attributes:
      hidden_size / num_hidden_layers / num_attention_heads / num_key_value_heads /
        intermediate_size: the Llama shape (GQA: 2 query heads share each key/value head).
      vocab_size: WordPiece vocabulary target.
      steps / batch_size / seq_len: optimisation budget (rows x tokens per step).
      learning_rate / warmup_steps / weight_decay: AdamW, linear warm-up then cosine decay.
      alpha: language sampling exponent (probability proportional to corpus size ** alpha).
      repeat_prob: share of segments that hold their sentence twice. Real text repeats names and
        phrases, which is how language models learn to copy from their context (induction
        heads); one-sentence segments never reward copying, and without it the instruction task
        (mostly a copy) is out of reach of a LoRA on q_proj/v_proj.
      seed: seeds the data stream and parameter init.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384
    vocab_size: int = 2500
    steps: int = 900
    batch_size: int = 32
    seq_len: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    alpha: float = 0.5
    repeat_prob: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.repeat_prob <= 1.0:
            raise ValueError(
                f"PretrainConfig.repeat_prob must be in [0, 1], got {self.repeat_prob}"
            )
        for name in ("hidden_size", "num_hidden_layers", "steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"PretrainConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"PretrainConfig.num_attention_heads ({self.num_attention_heads}) must be a "
                f"multiple of num_key_value_heads ({self.num_key_value_heads})"
            )

    def hf_config(self, vocab_size: int) -> dict:
        """The Hugging Face ``LlamaConfig`` dict (``vocab_size`` = the tokenizer's)."""
        return {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.hidden_size // self.num_attention_heads,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False,
            "pad_token_id": PAD,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
        }


def pretraining_corpus(seed: int) -> dict[str, list[str]]:
    """Plain sentences per language from the classification demo's generator (not shipped)."""
    return _data_module().unlabeled_corpus(PRETRAIN_SIZES, seed)


class LmBatches:
    """Deterministic packed LM batches: batch ``k`` is a pure function of ``(seed, k)``.

    Each row is one language (probability proportional to ``n ** alpha``) and packs
    ``<s> sentence </s>`` segments up to ``seq_len`` (the last one cut); with probability
    ``repeat_prob`` a segment holds its sentence twice (``<s> sentence sentence </s>``). Returns ``input_ids``,
    ``segment_ids`` (1, 2, ... per sentence; the model's attention mask), ``position_ids``
    (restarting per segment) and ``labels`` (= input ids; the loss shifts and ignores targets
    across segments).
    """

    def __init__(self, corpus: dict[str, list[str]], tokenizer, cfg: PretrainConfig):
        self.cfg = cfg
        self.langs = list(corpus)
        self.ids = {
            lang: tokenizer(texts, add_special_tokens=False)["input_ids"]
            for lang, texts in corpus.items()
        }
        weights = np.array([len(corpus[lang]) for lang in self.langs], np.float64) ** cfg.alpha
        self.probs = weights / weights.sum()

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 11, k]))
        shape = (cfg.batch_size, cfg.seq_len)
        ids = np.full(shape, PAD, np.int32)  # [B, T]
        seg = np.zeros(shape, np.int32)
        pos = np.zeros(shape, np.int32)
        for b in range(cfg.batch_size):
            pool = self.ids[self.langs[int(rng.choice(len(self.langs), p=self.probs))]]
            fill, s = 0, 0
            while fill < cfg.seq_len:
                sent = list(pool[int(rng.integers(len(pool)))])
                if rng.random() < cfg.repeat_prob:  # a repeated sentence: learn to copy
                    sent = sent + sent
                sent = [BOS, *sent, EOS][: cfg.seq_len - fill]
                s += 1
                n = len(sent)
                ids[b, fill : fill + n], seg[b, fill : fill + n] = sent, s
                pos[b, fill : fill + n] = np.arange(n)
                fill += n
        return {"input_ids": ids, "segment_ids": seg, "position_ids": pos, "labels": ids.copy()}


def pretrain(cfg: PretrainConfig, batches: LmBatches, vocab_size: int, log_every: int = 50):
    """Pretrain ``langtune_jax.models.llama``'s causal LM; returns ``(model, losses)``.

    The loss is the training step's own causal loss (``langtune_jax.train.task_loss``: shift by
    one, no target across a segment boundary), averaged over counted targets.
    """
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from langtune_jax.models import llama
    from langtune_jax.train import task_loss

    model = llama.from_hf_config(
        cfg.hf_config(vocab_size), "causal-lm", rngs=nnx.Rngs(params=cfg.seed)
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.learning_rate,
        min(cfg.warmup_steps, cfg.steps // 2),
        max(cfg.steps, 2),
        cfg.learning_rate * 0.05,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=cfg.weight_decay),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, batch):
        logits = model(
            batch["input_ids"], batch["segment_ids"], position_ids=batch["position_ids"]
        ).logits  # [B, T, V]
        loss_sum, count = task_loss(logits, batch, "causal-lm")
        return loss_sum / jnp.maximum(count, 1.0)

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
            print(
                f"step {k + 1:>5}/{cfg.steps}  loss {np.mean(losses[-log_every:]):.3f}  "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    return model, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo/causal")
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--seed", type=int, default=None, help="data seed (default: demo SEED)")
    parser.add_argument("--data-only", action="store_true", help="write only the JSONL files")
    args = parser.parse_args(argv)
    data = _data_module()
    seed = data.SEED if args.seed is None else args.seed
    sizes = write_instruction_splits(args.out / "data", seed)
    for split, per_lang in sizes.items():
        print(f"{split:>10}: " + ", ".join(f"{k}={v}" for k, v in per_lang.items()))
    if args.data_only:
        return

    from langtune_jax.models import save_pretrained

    cfg = PretrainConfig(steps=args.steps)
    corpus = pretraining_corpus(seed)
    texts = [t for lang in corpus for t in corpus[lang]]
    tokenizer = train_tokenizer(texts + [INSTRUCTION], cfg.vocab_size)
    print(f"corpus: {len(texts)} sentences; tokenizer vocab {len(tokenizer)}")
    batches = LmBatches(corpus, tokenizer, cfg)
    model, losses = pretrain(cfg, batches, len(tokenizer))
    folder = args.out / "tiny-llama"
    save_pretrained(model, folder)
    tokenizer.save_pretrained(folder)
    print(f"final loss {np.mean(losses[-50:]):.3f}; wrote {folder}")


if __name__ == "__main__":
    main()
