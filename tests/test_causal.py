"""The causal-LM path end to end (issue 9) on a tiny random Llama and a tiny tokenizer, offline.

* packing: a packed batch gives the same per-example losses as the same examples unpacked
  (the real step's forward and ``task_loss``), and ignoring segments would not;
* loss mask: prompt tokens contribute nothing to the loss or the gradients;
* a short ``train`` run of ``configs/demo_causal.yaml`` writes per-language perplexity reports
  that match transformers + peft in PyTorch on the exported adapter;
* generation: greedy tokens of ``langtune_jax.models.llama.generate`` equal transformers' ``generate``
  with the exported PEFT adapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from langtune_jax.config import load_config
from langtune_jax.data.features import collate, tokenize
from langtune_jax.data.packing import pack
from langtune_jax.models import from_pretrained
from langtune_jax.models.llama.generate import encode_prompts
from langtune_jax.tasks import IGNORE_INDEX
from langtune_jax.train import task_loss, train
from langtune_jax.train.runs import generate_run
from langtune_jax.train.step import forward
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
WORDS = {
    "aa": "ka ke ki ko ku ma me mi mo mu".split(),
    "bb": "zo za zi ze zu ro ra ri re ru".split(),
}
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
PAD, BOS, EOS = 0, 2, 3


def _make_tokenizer():
    """Word-level tokenizer over the tiny vocabulary (deterministic), BOS/EOS/PAD set."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIALS + ["=>", ":"] + [w for ws in WORDS.values() for w in ws]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip


def _examples(lang: str, n: int, seed: int) -> list[dict]:
    """Prompt: 2-6 words + '=> :'; response: the prompt's words reversed."""
    rng = np.random.default_rng([seed, len(lang), ord(lang[0])])
    rows = []
    for _ in range(n):
        words = list(rng.choice(WORDS[lang], size=int(rng.integers(2, 7))))
        rows.append(
            {
                "prompt": " ".join(words) + " => :",
                "response": " ".join(words[::-1]),
                "language": lang,
            }
        )
    return rows


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random Llama (transformers, GQA) + tokenizer folder and a two-language data set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("causal")
    tokenizer = _make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    sizes = {
        "train": {"aa": 48, "bb": 12},
        "validation": {"aa": 6, "bb": 6},
        "test": {"aa": 5, "bb": 5},
    }
    for split, per_lang in sizes.items():
        (root / "data" / split).mkdir(parents=True)
        for i, (lang, n) in enumerate(per_lang.items()):
            rows = _examples(lang, n, seed=10 * i + len(split))
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (root / "data" / split / f"{lang}.jsonl").write_text(text)
    return root, tokenizer


@pytest.fixture(scope="module")
def model(assets):
    return from_pretrained(assets[0] / "model", task="causal-lm")


def _per_example(logits, batch, rows) -> list[tuple[float, float]]:
    """(loss_sum, count) of each listed (row, segment) through the step's ``task_loss``."""
    out = []
    for r, seg in rows:
        keep = np.zeros_like(batch["labels"], dtype=bool)
        keep[r] = batch["segment_ids"][r] == seg if seg is not None else True
        part = {**batch, "labels": np.where(keep, batch["labels"], IGNORE_INDEX)}
        out.append(tuple(float(x) for x in task_loss(logits, part, "causal-lm")))
    return out


@pytest.mark.slow
def test_packed_losses_equal_unpacked(assets, model):
    _, tokenizer = assets
    examples = _examples("aa", 4, seed=1) + _examples("bb", 3, seed=2)
    store = tokenize(examples, tokenizer, task="causal-lm", max_length=32)
    rows = [(store, i) for i in range(len(examples))]
    packed, _, dropped = pack(rows, 2, 48, pad_id=PAD)
    assert dropped == 0 and packed["segment_ids"].max() >= 3  # really several per row
    unpacked = collate(rows, 32, pad_id=PAD, task="causal-lm")

    packed_logits = forward(model, jax.tree.map(jnp.asarray, packed), None).logits
    plain_logits = forward(model, jax.tree.map(jnp.asarray, unpacked), None).logits
    # Which (row, segment) holds example i: match by its tokens.
    where = {}
    for r in range(2):
        for s in range(1, packed["segment_ids"][r].max() + 1):
            where[tuple(packed["input_ids"][r][packed["segment_ids"][r] == s])] = (r, s)
    order = [where[tuple(store.input_ids[store.row(i)])] for i in range(len(examples))]
    got = _per_example(packed_logits, packed, order)
    want = _per_example(plain_logits, {**unpacked, "segment_ids": unpacked["attention_mask"]},
                        [(i, None) for i in range(len(examples))])  # fmt: skip
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=2e-5, atol=2e-5)
    assert all(count > 0 for _, count in got)

    # Negative control: ignoring the segments (one causal sequence per row) changes the losses of
    # every example that is not first in its row, so the comparison above can fail.
    leaky = model(jnp.asarray(packed["input_ids"]), jnp.asarray(packed["attention_mask"])).logits
    leaked = _per_example(leaky, packed, order)
    later = [i for i, (_, s) in enumerate(order) if s > 1]
    assert later and all(abs(leaked[i][0] - got[i][0]) > 1e-3 for i in later)


@pytest.mark.slow
def test_prompt_tokens_do_not_count(assets, model):
    _, tokenizer = assets
    examples = _examples("aa", 3, seed=3)
    store = tokenize(examples, tokenizer, task="causal-lm", max_length=32)
    batch = collate([(store, i) for i in range(3)], 32, pad_id=PAD, task="causal-lm")
    # Labels: -100 on <s> + prompt and padding; the response and </s> are targets.
    for i, ex in enumerate(examples):
        n_prompt = 1 + len(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
        n_resp = len(tokenizer(ex["response"], add_special_tokens=False)["input_ids"]) + 1
        labels = batch["labels"][i]
        assert (labels[:n_prompt] == IGNORE_INDEX).all() and (
            labels[n_prompt + n_resp :] == IGNORE_INDEX
        ).all()
        np.testing.assert_array_equal(
            labels[n_prompt : n_prompt + n_resp],
            batch["input_ids"][i][n_prompt : n_prompt + n_resp],
        )
    jbatch = jax.tree.map(jnp.asarray, batch)
    logits = forward(model, jbatch, None).logits.astype(jnp.float32)

    # d loss / d logits is exactly zero wherever the next token is a prompt token (or padding).
    grad_logits = jax.grad(lambda lg: task_loss(lg, jbatch, "causal-lm")[0])(logits)  # [B, T, V]
    target = np.asarray(batch["labels"][:, 1:] >= 0)  # position t predicts token t + 1
    g = np.abs(np.asarray(grad_logits[:, :-1])).sum(-1)
    assert (g[~target] == 0).all() and (g[target] > 0).all()

    # Parameter gradients equal those of a hand-written response-only NLL, and would differ if
    # prompt tokens were targets.
    def loss(m, labels, hand=False):
        lg = forward(m, {**jbatch, "labels": labels}, None).logits
        if not hand:
            return task_loss(lg, {**jbatch, "labels": labels}, "causal-lm")[0]
        logp = jax.nn.log_softmax(lg[:, :-1].astype(jnp.float32), axis=-1)
        nxt = jnp.asarray(batch["input_ids"][:, 1:])
        picked = jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
        return -jnp.sum(jnp.where(jnp.asarray(target), picked, 0.0))

    labels = jnp.asarray(batch["labels"])
    ours_l, ours_g = nnx.value_and_grad(loss)(model, labels)
    ref_l, ref_g = nnx.value_and_grad(lambda m: loss(m, labels, hand=True))(model)
    np.testing.assert_allclose(float(ours_l), float(ref_l), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ours_g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    full = jnp.asarray(np.where(batch["attention_mask"] > 0, batch["input_ids"], IGNORE_INDEX))
    _, leak_g = nnx.value_and_grad(loss)(model, full)
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
        jax.tree.leaves(ours_g), jax.tree.leaves(leak_g))]  # fmt: skip
    assert max(diffs) > 1e-4


def _short_run_config(assets, *overrides: str):
    """The shipped causal config on the tiny assets, 6 steps; ``overrides`` come last."""
    root, _ = assets
    source = (
        f'[{{path: "{root}/data/{{split}}", prompt_column: prompt, response_column: response}}]'
    )
    return load_config(
        ROOT / "configs" / "demo_causal.yaml",
        [
            f"model.name_or_path={root / 'model'}",
            f"data.sources={source}",
            "data.max_length=32",
            "data.length_buckets=[32]",
            "sampling.strategy=uniform",
            "train.steps=6",
            "train.batch_size=8",
            "train.log_every=3",
            "train.warmup_steps=0",
            "train.learning_rate=0.05",  # large, so the adapter clearly changes the model
            "eval.batch_size=8",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    """A short run of the shipped causal config on the tiny assets (LoRA q_proj/v_proj)."""
    cfg = _short_run_config(assets)
    assert cfg.data.packing and cfg.sampling.unit == "tokens"
    assert cfg.peft.lora.target_modules == ["q_proj", "v_proj"] and cfg.peft.lora.r == 8
    return train(cfg, run_dir=tmp_path_factory.mktemp("run") / "causal")


def _peft_model(assets, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(assets[0] / "model", dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def test_train_reports_per_language_perplexity_matching_peft(assets, run):
    root, tokenizer = assets
    for split in ("validation", "test"):
        report = json.loads((run / "eval" / split / "report.json").read_text())
        assert report["task"] == "causal-lm" and report["primary_metric"] == "perplexity"
        assert sorted(report["per_language"]) == ["aa", "bb"]
    peft_model = _peft_model(assets, run / "adapter")
    report = json.loads((run / "eval" / "validation" / "report.json").read_text())
    for lang in ("aa", "bb"):
        rows = [json.loads(line) for line in (root / "data/validation" / f"{lang}.jsonl").open()]
        nll, count = 0.0, 0
        for ex in rows:  # the reference: PyTorch + PEFT, response tokens only
            p = [BOS] + tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
            r = tokenizer(ex["response"], add_special_tokens=False)["input_ids"] + [EOS]
            with torch.no_grad():
                logits = peft_model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
            nll += float(
                torch.nn.functional.cross_entropy(logits, torch.tensor(r), reduction="sum")
            )
            count += len(r)
        got = report["per_language"][lang]
        assert got["num_tokens"] == count
        np.testing.assert_allclose(got["loss"], nll / count, rtol=1e-4)
        np.testing.assert_allclose(got["perplexity"], math.exp(nll / count), rtol=1e-4)


def test_generate_matches_transformers_peft(assets, run):
    _, tokenizer = assets
    adapter = run / "adapter"  # written by the run with export_peft (PEFT format)
    peft_model = _peft_model(assets, adapter)
    from safetensors.numpy import load_file

    lora_b = [
        v for k, v in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in k
    ]
    assert lora_b and max(np.abs(b).max() for b in lora_b) > 1e-2  # the adapter is trained

    prompts = ["ka ke ki => :", "zo za => :", "mu mo mi me ma ku => :", "ri => :"]
    ours = generate_run(run, prompts, max_new_tokens=8, verbose=False)
    ids, mask = encode_prompts(tokenizer, prompts)
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # left-padded batch
    with torch.no_grad():
        out = peft_model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=8, do_sample=False, eos_token_id=EOS, pad_token_id=PAD,
        )  # fmt: skip
    for c, row in zip(ours, out[:, ids.shape[1] :].tolist()):
        stop = row.index(EOS) if EOS in row else len(row)
        assert c.token_ids == row[:stop], c.prompt
    assert any(c.token_ids for c in ours)
    assert ours[0].text == tokenizer.decode(ours[0].token_ids, skip_special_tokens=True)


def test_cli_generate_prints_completions(run, capsys):
    from langtune_jax.cli import main

    args = ["generate", str(run), "--prompt", "ka ke => :", "--prompt", "zo => :"]
    assert main([*args, "--max-new-tokens", "4", "--temperature", "0.7", "--top-p", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert ">>> ka ke => :" in printed and ">>> zo => :" in printed


@pytest.fixture(scope="module")
def lang_run(assets, tmp_path_factory):
    """A short causal run with per-language bottleneck adapters (aa, bb) plus the shared one.

    Unpacked: a packed row may hold both languages, and routing picks one adapter per row."""
    cfg = _short_run_config(
        assets,
        "data.packing=false",
        "peft.method=adapters",
        "peft.adapters.adapter_size=8",
        "peft.adapters.languages=[aa, bb]",
    )
    return train(cfg, run_dir=tmp_path_factory.mktemp("langrun") / "causal")


@pytest.mark.slow  # heavy (>15 s on 2 cores): make test-slow, run by CI after make test
def test_generate_routes_each_prompt_through_its_language_adapter(assets, lang_run):
    from langtune_jax import peft as peft_lib
    from langtune_jax.train.runs import load_run

    _, tokenizer = assets
    prompt = "ka zo ke => :"
    ours = generate_run(
        lang_run, [prompt, prompt], max_new_tokens=6, languages=["aa", "bb"], verbose=False
    )
    # Reference: greedy decoding by full forward passes (no KV cache, eager), each prompt routed
    # alone through its language's adapter row.
    _, session = load_run(lang_run)
    model = session.split.merge()
    table = np.asarray(peft_lib.language_rows(model, session.dataset.languages))
    for completion, lang in zip(ours, ["aa", "bb"]):
        ids, _ = encode_prompts(tokenizer, [prompt])
        ids = jnp.asarray(ids)
        rows = jnp.asarray([table[session.dataset.languages.index(lang)]])
        new = []
        for _ in range(6):
            with peft_lib.with_routing(model, rows):
                logits = model(ids, attention_mask=jnp.ones_like(ids)).logits
            nxt = int(jnp.argmax(logits[0, -1]))
            if nxt == EOS:
                break
            new.append(nxt)
            ids = jnp.concatenate([ids, jnp.asarray([[nxt]])], axis=1)
        assert completion.token_ids == new, lang
    # The two language adapters were trained apart, so the same prompt decodes differently.
    assert ours[0].token_ids != ours[1].token_ids
    # One --language value serves every prompt.
    both = generate_run(
        lang_run, [prompt, prompt], max_new_tokens=6, languages=["bb"], verbose=False
    )
    assert both[0].token_ids == both[1].token_ids == ours[1].token_ids


def test_generate_language_errors(lang_run, run):
    with pytest.raises(ValueError, match="per-language adapters: give the prompts' language"):
        generate_run(lang_run, ["ka => :"], max_new_tokens=2, verbose=False)
    with pytest.raises(ValueError, match="language\\(s\\) xx not in the run's data"):
        generate_run(lang_run, ["ka => :"], max_new_tokens=2, languages=["xx"], verbose=False)
    with pytest.raises(ValueError, match="2 --language values for 3 prompts"):
        generate_run(lang_run, ["a", "b", "c"], max_new_tokens=2, languages=["aa", "bb"],
                     verbose=False)  # fmt: skip
    with pytest.raises(ValueError, match="no per-language adapters"):
        generate_run(run, ["ka => :"], max_new_tokens=2, languages=["aa"], verbose=False)


# --- the shipped demo assets (demo/causal) ----------------------------------------------------


def test_demo_causal_data_is_reproduced_by_its_script(tmp_path):
    script = load_script("make_demo_causal")
    script.write_instruction_splits(tmp_path, load_script("make_demo_data").SEED)
    shipped = sorted(p.relative_to(ROOT / "demo/causal/data") for p in
                     (ROOT / "demo/causal/data").rglob("*.jsonl"))  # fmt: skip
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    assert len(shipped) == 15
    for rel in shipped:
        assert (tmp_path / rel).read_bytes() == (ROOT / "demo/causal/data" / rel).read_bytes(), rel


def test_demo_tiny_llama_loads_in_ours_and_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ROOT / "demo/causal/tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 2, 3)
    ours = from_pretrained(folder, task="causal-lm")
    assert ours.config.num_key_value_heads < ours.config.num_attention_heads  # GQA
    ids, mask = encode_prompts(tokenizer, ["maria => past :", "lima taxi pizza"])
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).logits.numpy()
    got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)).logits)
    real = mask.astype(bool)  # padded positions differ by convention only
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)
