"""Training on chat messages and `langtune generate` format prompts the same way, with or without
a chat template; the fallback is announced once per run."""

import copy
import json
import logging

import pytest

from langtune_jax.data import DataConfig, DataPipeline, SamplingConfig, SourceConfig
from langtune_jax.data.features import tokenize
from langtune_jax.models.llama.generate import encode_prompts
from langtune_jax.tasks import IGNORE_INDEX

TEMPLATE = (
    "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.mark.parametrize("templated", [False, True], ids=["fallback", "template"])
def test_generate_prompts_equal_training_prompts(tokenizer, templated):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE if templated else None
    msgs = [{"role": "user", "content": "el gato"}, {"role": "assistant", "content": "the cat"}]
    store = tokenize([{"messages": msgs}], tok, task="causal-lm", max_length=64)
    ids = store.input_ids[store.row(0)].tolist()
    labels = store.token_labels[store.row(0)].tolist()
    prompt_len = labels.index(next(t for t in labels if t != IGNORE_INDEX))
    trained_prompt = ids[:prompt_len]
    gen_ids, mask = encode_prompts(tok, ["el gato"], chat=True)
    assert gen_ids[0][mask[0] == 1].tolist() == trained_prompt
    # Without a template both start with BOS; a template writes its own tokens instead.
    assert (trained_prompt[0] == tok.bos_token_id) is (not templated)


def test_fallback_is_warned_once_per_run(tokenizer, tmp_path, caplog):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "el gato"},
                {"role": "assistant", "content": "x"},
            ]
        }
    ] * 4
    (tmp_path / "en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = SourceConfig(path=str(tmp_path / "{language}.jsonl"), splits=["train"],
                       messages_column="messages")  # fmt: skip
    cfg = DataConfig(sources=[src], max_length=32)
    with caplog.at_level(logging.WARNING):
        DataPipeline(cfg, SamplingConfig(), tokenizer, task="causal-lm")
        DataPipeline(cfg, SamplingConfig(), tokenizer, task="causal-lm", warn=False)  # reopened
    notes = [r for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(notes) == 1
