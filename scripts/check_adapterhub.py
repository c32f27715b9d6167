"""Check AdapterHub interop against the real ``adapters`` library, in both directions.

Two Python environments: ours (JAX, transformers 5) and a separate one with ``adapters`` 1.3.0, its
transformers 4.57 and torch (``make test-adapterhub`` creates it). The script runs in ours and
calls itself under the other one (``--library-side``):

1. ours -> library: for each case, a tiny random BERT (or XLM-R) is written as a transformers
   folder, our adapters are applied with random non-zero weights (so a dead or misplaced adapter
   fails), exported with :func:`export_adapterhub`, and our outputs on fixed inputs are saved.
   The library side loads the folder with transformers, ``adapters.init(model)``,
   ``model.load_adapter(folder, use_safetensors=True)`` (the ``torch-bin`` case: the plain
   ``load_adapter(folder)`` on ``pytorch_adapter.bin``), activates it and compares in eval mode.
2. library -> ours: the library adds adapters with configs our semantics support, randomises
   their weights (and the head's), saves them with ``save_adapter`` and records its outputs; we
   ``import_adapterhub`` each folder and compare. The library's default Pfeiffer config
   (``SeqBnConfig()``, ``original_ln_before=True``) must be refused.

Invertible adapters (MAD-X's NICE block, ``inv_adapter: nice`` / ``SeqBnInvConfig``) run in both
directions; for a masked-LM model the library's logits are taken through the block's inverse
before the decoder (its flex-head MLM head does that, its static ``BertForMaskedLM`` does not; see
``_mlm_through_inverse``), as ours are.

Compared: the last hidden state and the logits, float32, max abs difference <= ``TOL`` (1e-5).
``effect`` is the max abs change the adapters make to the hidden state (it must be far above TOL
for a PASS to mean anything). Exit status 1 on any mismatch or failure.

    python scripts/check_adapterhub.py --python .venv-adapterhub/bin/python   # or: make test-adapterhub
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TOL = 1e-5
VOCAB = 100
BERT_HF = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_act="gelu",
)
# ours -> library: (model_type, task, AdapterConfig kwargs, write the torch .bin too)
OURS = {
    "pfeiffer": ("bert", "sequence-classification", dict(placement="pfeiffer", adapter_size=8), 0),
    "houlsby": (
        "bert",
        "sequence-classification",
        dict(placement="houlsby", adapter_size=8, non_linearity="swish"),
        0,
    ),
    "parallel": (
        "bert",
        "sequence-classification",
        dict(placement="parallel", adapter_size=4, scaling=4.0),
        0,
    ),
    "houlsby-gelu-layers-0,2-m5": (
        "bert",
        "sequence-classification",
        dict(placement="houlsby", adapter_size=5, non_linearity="gelu", layers=[0, 2], scaling=0.5),
        0,
    ),
    "pfeiffer-bare-BertModel": ("bert", None, dict(placement="pfeiffer", reduction_factor=4.0), 0),
    "houlsby-xlm-roberta": (
        "xlm-roberta",
        "sequence-classification",
        dict(placement="houlsby", adapter_size=8),
        0,
    ),
    "pfeiffer-torch-bin": ("bert", "sequence-classification", dict(placement="pfeiffer"), 1),
    "pfeiffer+trained-pooler-in-head-file": (
        "bert",
        "sequence-classification",
        dict(placement="pfeiffer", modules_to_save=["classifier", "pooler"]),
        0,
    ),
    # MAD-X language adapters: invertible adapters at the embeddings, the inverse before the
    # masked-LM decoder (the MLM head stays the checkpoint's, as MAD-X trains them)
    "pfeiffer+inv-masked-lm": (
        "bert",
        "masked-lm",
        dict(placement="pfeiffer", adapter_size=8, inv_adapter="nice", modules_to_save=[]),
        0,
    ),
    "pfeiffer+inv(r=4,gelu)-xlm-roberta-masked-lm": (
        "xlm-roberta",
        "masked-lm",
        dict(
            placement="pfeiffer",
            adapter_size=8,
            non_linearity="gelu",
            inv_adapter="nice",
            inv_adapter_reduction_factor=4.0,
            modules_to_save=[],
        ),
        0,
    ),
    "houlsby+inv-sequence-classification": (
        "bert",
        "sequence-classification",
        dict(placement="houlsby", adapter_size=8, inv_adapter="nice"),
        0,
    ),
}
# library -> ours: (model_type, task, config class, kwargs, use_safetensors, must be refused)
LIBRARY = {
    "lib-SeqBn(original_ln_before=False)": (
        "bert",
        "sequence-classification",
        "SeqBnConfig",
        dict(original_ln_before=False, reduction_factor=4),
        True,
        "",
    ),
    "lib-DoubleSeqBn(.bin)": (
        "bert",
        "sequence-classification",
        "DoubleSeqBnConfig",
        dict(reduction_factor=8),
        False,
        "",
    ),
    "lib-ParBn": (
        "bert",
        "sequence-classification",
        "ParBnConfig",
        dict(reduction_factor=8),
        True,
        "",
    ),
    "lib-DoubleSeqBn(gelu,leave_out=[1],r=6.4)": (
        "bert",
        "sequence-classification",
        "DoubleSeqBnConfig",
        dict(reduction_factor=6.4, non_linearity="gelu", leave_out=[1], scaling=0.5),
        True,
        "",
    ),
    "lib-SeqBn-bare-BertModel": (
        "bert",
        None,
        "SeqBnConfig",
        dict(original_ln_before=False, reduction_factor=4),
        True,
        "",
    ),
    "lib-DoubleSeqBn-xlm-roberta": (
        "xlm-roberta",
        "sequence-classification",
        "DoubleSeqBnConfig",
        dict(reduction_factor=4),
        True,
        "",
    ),
    # .bin: the library's safetensors save of a masked-LM head fails (its tied decoder bias
    # shares memory with cls.predictions.bias); torch.save keeps both keys
    "lib-SeqBnInv-masked-lm(+MLM head, .bin)": (
        "bert",
        "masked-lm",
        "SeqBnInvConfig",
        dict(original_ln_before=False, reduction_factor=4),
        False,
        "",
    ),
    "lib-DoubleSeqBnInv-sequence-classification": (
        "bert",
        "sequence-classification",
        "DoubleSeqBnInvConfig",
        dict(reduction_factor=4, inv_adapter_reduction_factor=4),
        True,
        "",
    ),
    "lib-SeqBn()-default-refused": (
        "bert",
        "sequence-classification",
        "SeqBnConfig",
        dict(reduction_factor=4),
        True,
        "original_ln_before",
    ),
}


def inputs() -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(0)
    ids = rs.randint(3, VOCAB, (3, 9)).astype(np.int64)  # no pad / special ids
    mask = np.ones((3, 9), np.int64)
    mask[0, -3:] = 0
    return ids, mask


def hf_folder(work: Path, model_type: str, task: str | None) -> Path:
    """A random transformers folder written by our ``save_pretrained`` (one per model kind)."""
    from flax import nnx

    from langtune_jax.models import bert, save_pretrained

    folder = work / "hf" / f"{model_type}-{task}"
    if not folder.is_dir():
        hf = {**BERT_HF, "model_type": model_type}
        if model_type != "bert":
            hf.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
            hf["max_position_embeddings"] += 2
        model = bert.from_hf_config(hf, task, rngs=nnx.Rngs(7), num_labels=3)
        save_pretrained(model, folder)
    return folder


def our_outputs(model) -> dict[str, np.ndarray]:
    import jax.numpy as jnp

    ids, mask = inputs()
    out = model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    res = {"hidden": np.asarray(out.last_hidden_state)}
    if out.logits is not None:  # a bare BertModel's .logits is the pooled output
        res["logits"] = np.asarray(out.logits)
    return res


def ours_export(work: Path) -> dict[str, dict]:
    """Step 1, our side: export every ``OURS`` case and save our outputs."""
    import jax
    from flax import nnx

    from langtune_jax.models import from_pretrained
    from langtune_jax.peft.adapters import (
        AdapterConfig,
        AdapterParam,
        apply_adapters,
        export_adapterhub,
    )

    manifest = {}
    for i, (case, (model_type, task, kwargs, torch_bin)) in enumerate(OURS.items()):
        folder = hf_folder(work, model_type, task)
        model = from_pretrained(folder, task)
        model.eval()
        base = our_outputs(model)["hidden"]
        apply_adapters(model, AdapterConfig(**kwargs))
        key = jax.random.key(100 + i)
        for path, var in nnx.iter_graph(model):
            # adapters, and a trained pooler where one is saved (else the HF folder has it)
            if isinstance(var, AdapterParam) or (
                isinstance(var, nnx.Param)
                and "pooler" in path
                and "pooler" in (kwargs.get("modules_to_save") or [])
            ):
                key, sub = jax.random.split(key)
                var[...] = 0.5 * jax.random.normal(sub, var.shape, var.dtype)
        out_dir = work / "ours" / f"case{i}"
        export_adapterhub(
            model, out_dir / "adapter", adapter_name=f"a{i}", torch_bin=bool(torch_bin)
        )
        outs = our_outputs(model)
        np.savez(out_dir / "outputs.npz", **outs)
        effect = float(np.abs(outs["hidden"] - base).max())
        manifest[case] = dict(
            hf=str(folder), adapter=str(out_dir / "adapter"), outputs=str(out_dir / "outputs.npz"),
            task=task, safetensors=not torch_bin, effect=effect,
        )  # fmt: skip
    for j, (case, (model_type, task, *_)) in enumerate(LIBRARY.items()):
        manifest[case] = dict(hf=str(hf_folder(work, model_type, task)), task=task)
        manifest[case]["adapter"] = str(work / "library" / f"case{j}" / "adapter")
        manifest[case]["outputs"] = str(work / "library" / f"case{j}" / "outputs.npz")
    return manifest


# --------------------------------------------------------------------------------------------------
# The library side (runs under the adapters venv: torch, transformers 4.57, adapters; no JAX)


def _hf_model(spec: dict):
    import adapters
    import transformers

    cls = {
        None: transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "masked-lm": transformers.AutoModelForMaskedLM,
    }[spec["task"]]
    model = cls.from_pretrained(spec["hf"])
    adapters.init(model)
    return model


def _run(model) -> dict[str, np.ndarray]:
    import torch

    ids, mask = inputs()
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    output_hidden_states=True)  # fmt: skip
    res = {"hidden": out.hidden_states[-1].numpy()}
    logits = getattr(out, "logits", None)
    logits = out.pooler_output if logits is None else logits  # a bare BertModel: pooled
    if logits is not None:
        res["logits"] = logits.numpy()
    if _is_masked_lm(model) and model.base_model.get_invertible_adapter() is not None:
        res["logits"] = _mlm_through_inverse(model, out.hidden_states[-1])
    return res


def _is_masked_lm(model) -> bool:
    return type(model).__name__.endswith("ForMaskedLM")


def _mlm_through_inverse(model, hidden) -> np.ndarray:
    """Masked-LM logits with the active invertible adapter's inverse before the decoder.

    The library applies that inverse in its flex-head models' masked-LM head
    (``heads/language_modeling.py``: ``inv_adapter(seq_outputs, rev=True)`` before the last
    layer), as MAD-X does; its static-head ``BertForMaskedLM`` skips it (its logits then read the
    transformed hidden states directly). So the composition runs here on the static model, with
    the library's own module (``NICECouplingBlock.forward(rev=True)``) and the model's own head.
    """
    import torch

    inv = model.base_model.get_invertible_adapter()
    with torch.no_grad():
        if hasattr(model, "cls"):
            h = model.cls.predictions.transform(hidden)
        else:  # RobertaLMHead: dense, gelu, layer_norm, then the decoder
            head = model.lm_head
            h = head.layer_norm(torch.nn.functional.gelu(head.dense(hidden)))
        return model.get_output_embeddings()(inv(h, rev=True)).numpy()


def library_load(spec: dict) -> dict:
    """Step 1, library side: load our export, compare with our outputs."""
    model = _hf_model(spec)
    info: dict = {}
    name = model.load_adapter(
        spec["adapter"], use_safetensors=spec["safetensors"], loading_info=info
    )
    model.set_active_adapters(name)
    theirs, ours = _run(model), dict(np.load(spec["outputs"]))
    row = {k: float(np.abs(theirs[k] - ours[k]).max()) for k in ours if k in theirs}
    row["active"] = str(model.active_adapters)
    row["missing keys"] = len(info.get("missing_keys", []))
    row["unexpected keys"] = len(info.get("unexpected_keys", []))
    return row


def library_save(spec: dict, config_class: str, kwargs: dict, safetensors: bool, seed: int) -> dict:
    """Step 2, library side: add, randomise and save an adapter; record the library's outputs."""
    import adapters
    import torch

    model = _hf_model(spec)
    base = _run(model)["hidden"]
    model.add_adapter("lib", config=getattr(adapters, config_class)(**kwargs))
    model.set_active_adapters("lib")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if any(k in key for k in (".adapters.lib.", "invertible_adapters.lib.")) or (
                key.startswith("classifier.")
            ):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    outs = _run(model)
    Path(spec["adapter"]).parent.mkdir(parents=True, exist_ok=True)
    model.save_adapter(spec["adapter"], "lib", use_safetensors=safetensors)
    np.savez(spec["outputs"], **outs)
    return {"effect": float(np.abs(outs["hidden"] - base).max())}


def library_side(work: Path) -> None:
    import logging

    import adapters
    import torch
    import transformers

    # "adapters available but none are activated": the base-model runs, before activation.
    logging.getLogger("adapters").setLevel(logging.ERROR)
    manifest = json.loads((work / "manifest.json").read_text())
    results = {
        "versions": {
            "adapters": adapters.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }
    }
    for case in OURS:
        results[case] = library_load(manifest[case])
    for j, (case, (_, _, cls, kwargs, safe, _)) in enumerate(LIBRARY.items()):
        results[case] = library_save(manifest[case], cls, kwargs, safe, seed=200 + j)
    (work / "library_results.json").write_text(json.dumps(results, indent=2))


# --------------------------------------------------------------------------------------------------
# Step 2, our side, and the report


def ours_import(work: Path, manifest: dict, results: dict) -> None:
    from langtune_jax.models import from_pretrained
    from langtune_jax.peft.adapters import import_adapterhub

    for case, (*_, refused_field) in LIBRARY.items():
        spec, row = manifest[case], results[case]
        model = from_pretrained(spec["hf"], spec["task"])
        model.eval()
        if refused_field:
            try:
                import_adapterhub(model, spec["adapter"])
                row["refused"] = "NOT REFUSED"
            except ValueError as e:
                row["refused"] = "yes" if f"has {refused_field}=" in str(e) else f"other: {e}"
            continue
        ours, theirs = (
            our_outputs(import_adapterhub(model, spec["adapter"])),
            np.load(spec["outputs"]),
        )
        row.update({k: float(np.abs(ours[k] - theirs[k]).max()) for k in ours})


def report(manifest: dict, results: dict) -> bool:
    print("versions (library venv):", ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    print(f"tolerance: max abs difference <= {TOL:g} (float32)\n")
    header = f"{'direction':<16} {'case':<44} {'hidden':>9} {'logits':>9} {'effect':>7}  result"
    print(header + "\n" + "-" * len(header))
    ok_all = True
    for case, row in ((c, results[c]) for c in [*OURS, *LIBRARY]):
        effect = row.get("effect", manifest[case].get("effect", float("nan")))
        if "refused" in row:
            ok = row["refused"] == "yes"
            diffs = f"{'-':>9} {'-':>9} {'-':>7}"
            verdict = "PASS (refused)" if ok else f"FAIL ({row['refused']})"
        else:
            keys = row.get("missing keys", 0) + row.get("unexpected keys", 0)
            ok = row["hidden"] <= TOL and row.get("logits", 0.0) <= TOL and keys == 0
            ok = ok and effect > 100 * TOL
            logits = f"{row['logits']:9.1e}" if "logits" in row else f"{'-':>9}"
            diffs = f"{row['hidden']:9.1e} {logits} {effect:7.3f}"
            verdict = (
                "PASS" if ok else f"FAIL{f' ({keys} missing/unexpected keys)' if keys else ''}"
            )
        direction = "ours -> library" if case in OURS else "library -> ours"
        print(f"{direction:<16} {case:<44} {diffs}  {verdict}")
        ok_all &= ok
    print("\n" + ("PASS" if ok_all else "FAIL"))
    return ok_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=".venv-adapterhub/bin/python",
                        help="python of the venv with adapters 1.3.0")  # fmt: skip
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--library-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.library_side:
        library_side(args.library_side)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        manifest = ours_export(work)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        cmd = [args.python, str(Path(__file__).resolve()), "--library-side", str(work)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run(cmd, check=True, env={**env, "HF_HUB_OFFLINE": "1"})
        results = json.loads((work / "library_results.json").read_text())
        ours_import(work, manifest, results)
        return 0 if report(manifest, results) else 1


if __name__ == "__main__":
    sys.exit(main())
