"""The files of a Hugging Face model folder: where it is (a local folder or a Hub snapshot), its
``config.json`` and safetensors shards, its tokenizer, and writing one (``save_pretrained``).

An NNX parameter path maps to an HF state-dict key by joining with ``.`` and renaming the leaf
(:func:`hf_key`); :mod:`langtune_jax.models.hub` builds and loads models on top of these files.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

#: ``model_type`` (config.json) -> module implementing it (``from_hf_config``, ``TASKS``).
MODEL_TYPES: dict[str, str] = {
    "bert": "langtune_jax.models.bert",
    "roberta": "langtune_jax.models.bert",
    "xlm-roberta": "langtune_jax.models.bert",
    "llama": "langtune_jax.models.llama",
    "mistral": "langtune_jax.models.llama",
    "qwen2": "langtune_jax.models.llama",
    "qwen3": "langtune_jax.models.llama",
}

_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
# Buffers some older checkpoints carry; never parameters.
# config.json keys transformers understands for any model even when the file omits them.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*", "*.tiktoken"]


# ----------------------------------------------------------------------------------- naming


def hf_key(path: tuple[Any, ...]) -> str:
    """HF state-dict key of an NNX parameter path, e.g. ``(..., 'query', 'kernel')`` ->
    ``'....query.weight'``."""
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, _LEAF_TO_HF.get(leaf, leaf)])


def module_at(model: nnx.Module, key: str) -> Any:
    """The submodule at an HF module path (``'bert.encoder.layer.0.attention.self.query'``).

    A parameter key (``'....query.weight'``) gives the module that owns the parameter.

    Raises:
      KeyError: naming the first path component that does not exist.
    """
    node: Any = model
    parts = key.split(".")
    for i, part in enumerate(parts):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            if i == len(parts) - 1 and isinstance(node, nnx.Module):
                return node  # the leaf named an HF parameter ("weight", "bias", "gamma", ...)
            done = ".".join(parts[:i]) or "<root>"
            raise KeyError(
                f"{type(model).__name__} has no module '{key}': '{done}' has no '{part}'"
            ) from None
    return node


# ----------------------------------------------------------------------------------- resolve


def resolve(name_or_path: str | Path) -> Path:
    """A local folder as is; otherwise a Hub repo id downloaded with ``huggingface_hub``.

    Raises:
      FileNotFoundError: the folder does not exist and the Hub cannot provide ``name_or_path``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; pass the folder that holds config.json")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated repo: one message for people
        raise FileNotFoundError(
            f"'{name}' is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(err).__name__}: {err}); pass a local folder holding config.json and "
            "model.safetensors, or check the repo id and HF_HUB_OFFLINE"
        ) from err


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; point at a Hugging Face model folder "
            "(config.json + model.safetensors), e.g. one written by save_pretrained"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err


def model_module(hf_config: dict[str, Any], folder: Path):
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{folder / 'config.json'}: model_type={model_type!r} is not supported; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return importlib.import_module(MODEL_TYPES[model_type])


# ----------------------------------------------------------------------------------- files


def _open_safetensors(path: Path, safe_open):
    """``safe_open`` with an error that names the file (a truncated download, a copy cut short)."""
    from safetensors import SafetensorError

    try:
        return safe_open(path, framework="np")
    except SafetensorError as err:
        raise ValueError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated: re-download "
            "or re-save the model"
        ) from err


class Checkpoint:
    """Read access to ``model.safetensors`` or a sharded ``model.safetensors.index.json``."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        single = folder / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{index}: not a safetensors index ({type(err).__name__}: {err}); re-download "
                    "or re-save the model"
                ) from err
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            files, weight_map = [single.name], None
        else:
            raise FileNotFoundError(
                f"{folder} has neither model.safetensors nor model.safetensors.index.json "
                "(other formats such as pytorch_model.bin are not read: re-save the model with "
                "transformers' save_pretrained(..., safe_serialization=True))"
            )
        for name in files:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{index}: lists shard {name}, missing from {folder}")
        self.handles = {name: _open_safetensors(folder / name, safe_open) for name in files}
        if weight_map is None:
            weight_map = {k: files[0] for k in self.handles[files[0]].keys()}
        self.weight_map: dict[str, str] = weight_map
        self.folder = folder

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handles[self.weight_map[key]].get_slice(key).get_shape())

    def read(self, key: str, index: tuple[slice, ...] | None, transpose: bool, dtype) -> np.ndarray:
        """The ``index`` slice (over *our* layout) of tensor ``key`` as ``dtype``."""
        sl = self.handles[self.weight_map[key]].get_slice(key)
        if index is None:
            index = tuple(slice(None) for _ in sl.get_shape())
        if transpose:  # HF [out, in] on disk, ours [in, out]: read the mirrored slice
            arr = sl[tuple(reversed(index))].T
        else:
            arr = sl[index] if index else sl[:]
        return np.ascontiguousarray(arr).astype(dtype)


# ----------------------------------------------------------------------------------- save


def host_array(x: Any) -> np.ndarray:
    """A (possibly sharded, multi-host) array as a contiguous numpy array on every process.

    Arrays that span several processes are gathered first: a collective, so every process must
    call it.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.ascontiguousarray(np.asarray(jax.device_get(x)))


def make_readable(path: str | Path) -> None:
    """Give group and others read access (and directory traversal) to ``path`` and what it holds.

    ``safetensors`` creates its files with mode 0600; exported checkpoints are meant to be shared
    like any other output.
    """
    import stat

    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        extra = stat.S_IRGRP | stat.S_IROTH
        if p.is_dir():
            extra |= stat.S_IXGRP | stat.S_IXOTH
        p.chmod(p.stat().st_mode | extra)


def save_pretrained(
    model: nnx.Module, folder: str | Path, *, label_names: list[str] | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads.

    Only plain ``nnx.Param`` leaves are written (PEFT variables are not: merge or export them with
    ``langtune_jax.peft``). With several JAX processes every process must call this (arrays are
    gathered); process 0 writes.

    Args:
      model: one of our models.
      folder: output folder (created).
      label_names: class (tag) names in label-id order, written as ``id2label`` / ``label2id``.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    tensors: dict[str, np.ndarray] = {}
    dtypes = set()
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if type(var) is not nnx.Param:
            continue
        arr = host_array(var.get_value())
        dtypes.add(arr.dtype)
        if path[-1] == "kernel":
            arr = arr.T
        tensors[hf_key(tuple(path))] = np.ascontiguousarray(arr)
    config = model.config.to_hf()
    config["architectures"] = [model.hf_architecture]
    config["dtype"] = "bfloat16" if any(d == jnp.bfloat16 for d in dtypes) else "float32"
    if label_names:
        config["id2label"] = {str(i): str(n) for i, n in enumerate(label_names)}
        config["label2id"] = {str(n): i for i, n in enumerate(label_names)}
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        make_readable(folder)
    return folder


#: Files one of which a tokenizer folder holds (fast, WordPiece, BPE, SentencePiece, tiktoken).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "tokenizer.tiktoken",
)


def load_tokenizer(name_or_path: str | Path):
    """The transformers ``AutoTokenizer`` of a local folder (first) or Hub repo id.

    Raises:
      FileNotFoundError: the folder holds no tokenizer file. (transformers would otherwise build
        a tokenizer of only its special tokens, which maps every word to ``[UNK]``.)
    """
    from transformers import AutoTokenizer

    folder = resolve(name_or_path)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the base "
            "model's tokenizer files into it (tokenizer.save_pretrained) or set model.tokenizer"
        )
    if (folder / "config.json").is_file():
        read_config(folder)  # transformers reads it too; a corrupt one is named here, precisely
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ValueError(
            f"{folder}: the tokenizer has only its {len(tokenizer)} special tokens; its "
            "vocabulary file is empty or unreadable: copy the base model's tokenizer files"
        )
    return tokenizer


def position_limit(name_or_path: str | Path) -> int | None:
    """Longest input (tokens) the model's position table allows, from its ``config.json``;
    None when the config sets no limit. Read without building the model."""
    folder = resolve(name_or_path)
    hf = read_config(folder)
    module = model_module(hf, folder)
    if hasattr(module, "BertConfig"):  # RoBERTa-style tables spend pad_token_id + 1 slots
        return module.BertConfig.from_hf(hf).max_length
    limit = hf.get("max_position_embeddings")
    return int(limit) if limit else None
