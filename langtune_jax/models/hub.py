"""Hugging Face checkpoints -> NNX models: build from config.json, check, load (the files
themselves, the tokenizer and saving are :mod:`langtune_jax.models.hub_files`).

Our module attribute paths mirror the HF PyTorch state-dict keys (the model contract), so the
conversion is generic: an NNX parameter path maps to an HF key by joining with ``.`` and renaming
the leaf (``kernel``/``scale``/``embedding`` -> ``weight``; Linear kernels are transposed between
HF ``[out, in]`` and our ``[in, out]``). No per-architecture key tables::

    ('bert', 'encoder', 'layer', 0, 'attention', 'self', 'query', 'kernel')
        <-> 'bert.encoder.layer.0.attention.self.query.weight'   (transposed)

Loading builds the model *abstractly* first (``nnx.eval_shape``: shapes only), checks every key and
shape against the checkpoint, and only then materialises arrays: each parameter is read straight
from the safetensors file into its final (optionally sharded) array with
``jax.make_array_from_callback``, so a device only ever reads its own slice. Weights the checkpoint
lacks but the task head needs (a classifier on top of a pretrained encoder) are initialised by a
jitted build of the model whose unused outputs XLA prunes away.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.common import DEFAULT_RULES, logical_to_spec
from langtune_jax.models.hub_files import (
    Checkpoint,
    hf_key,
    model_module,
    read_config,
    resolve,
)

logger = logging.getLogger(__name__)

_BUFFER_SUFFIXES = ("position_ids", "inv_freq", "masked_bias", "attn.bias")
_GENERIC_OVERRIDES = ("id2label", "label2id", "num_labels", "classifier_dropout", "problem_type")


# ----------------------------------------------------------------------------------- load


def _apply_overrides(hf_config, overrides, folder):
    for key in overrides:
        if key not in hf_config and key not in _GENERIC_OVERRIDES:
            raise ValueError(
                f"unknown config override {key!r}: {folder / 'config.json'} has no such key "
                f"(keys: {', '.join(sorted(hf_config))})"
            )
    return {**hf_config, **overrides}


def _norm_paths(model: nnx.Module) -> set[tuple]:
    norms = (nnx.LayerNorm, nnx.RMSNorm)
    return {tuple(p) for p, node in nnx.iter_graph(model) if isinstance(node, norms)}


def _optional_modules(model: nnx.Module) -> tuple[str, ...]:
    """Module paths a checkpoint may lack (task heads, a pooler): initialised freshly then."""
    return tuple(getattr(model, "init_if_missing", getattr(model, "head_modules", ())))


def _under(key: str, modules: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``modules`` or inside one."""
    return any(key == o or key.startswith(o + ".") for o in modules)


def _under_any(module: str, keys: list[str]) -> bool:
    """Whether any of ``keys`` is ``module`` or inside it."""
    return any(_under(k, (module,)) for k in keys)


def _namespace(prefix: str | None, params: dict[str, tuple], ckpt_keys: set[str]):
    """``(to_model, in_base)`` for a model and checkpoint that may differ by ``base_model_prefix``.

    ``to_model(ckpt_key)`` is the key in the model's namespace (``None``: outside the bare base
    model); ``in_base(model_key)`` says whether a key belongs to the base model the checkpoint
    must fill (a bare checkpoint loaded under a task model says nothing about its head).
    """
    model_prefixed = bool(prefix) and any(k.startswith(prefix + ".") for k in params)
    ckpt_prefixed = bool(prefix) and any(k.startswith(prefix + ".") for k in ckpt_keys)

    def to_model(k: str) -> str | None:
        if model_prefixed and not ckpt_prefixed:
            return f"{prefix}.{k}"
        if ckpt_prefixed and not model_prefixed:
            return k[len(prefix) + 1 :] if k.startswith(prefix + ".") else None
        return k

    def in_base(m: str | None) -> bool:
        return m is not None and (not model_prefixed or m.startswith(prefix + "."))

    return to_model, in_base


def _pair(model, params: dict[str, tuple], by_model: dict[str, str], ckpt: Checkpoint):
    """``(found, fresh, missing, bad_shapes)``: each model parameter's checkpoint key, or why not."""
    norms = _norm_paths(model)
    optional = _optional_modules(model)
    found, fresh, missing, bad_shapes = {}, [], [], []
    for key, (path, shape, transpose) in params.items():
        candidates = [key]
        if tuple(path[:-1]) in norms:  # legacy TF-era LayerNorm names
            candidates.append(
                key.rsplit(".", 1)[0] + (".gamma" if path[-1] == "scale" else ".beta")
            )
        hit = next((by_model[c] for c in candidates if c in by_model), None)
        if hit is None:
            (fresh if _under(key, optional) else missing).append(key)
            continue
        expected = tuple(reversed(shape)) if transpose else tuple(shape)
        got = ckpt.shape(hit)
        if got != expected:
            bad_shapes.append(f"{hit}: expected {list(expected)}, got {list(got)}")
        found[key] = hit
    return found, fresh, missing, bad_shapes


def _check_paired(ckpt: Checkpoint, name: str, bad_shapes: list[str], missing: list[str]):
    if bad_shapes:
        raise ValueError(
            f"{ckpt.folder}: {len(bad_shapes)} weight(s) do not fit {name} built from its "
            f"config.json: " + "; ".join(bad_shapes[:10])
        )
    if missing:
        raise ValueError(
            f"{ckpt.folder}: checkpoint lacks {len(missing)} weight(s) of {name}: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
            + " (is config.json the one these weights were saved with?)"
        )


def _leftovers(model, ckpt_keys: set[str], used: set[str], to_model, in_base):
    """``(ignored, unexpected)``: unused checkpoint keys that may stay unused, and the others."""
    optional = _optional_modules(model)
    ignored, unexpected = [], []
    for k in sorted(ckpt_keys - used):
        m = to_model(k)
        if not in_base(m) or _under(m, optional) or k.endswith(_BUFFER_SUFFIXES):
            ignored.append(k)
        else:
            unexpected.append(k)
    return ignored, unexpected


def _match(model, params: dict[str, tuple], ckpt: Checkpoint):
    """Pair each model parameter with a checkpoint key.

    Returns ``(found: {model_key: ckpt_key}, fresh: [model_key])``; raises on missing base weights,
    unexpected base keys and shape mismatches.
    """
    ckpt_keys = set(ckpt.weight_map)
    to_model, in_base = _namespace(getattr(model, "base_model_prefix", None), params, ckpt_keys)
    by_model = {m: k for k in ckpt_keys if (m := to_model(k)) is not None}
    found, fresh, missing, bad_shapes = _pair(model, params, by_model, ckpt)
    name = type(model).__name__
    _check_paired(ckpt, name, bad_shapes, missing)
    ignored, unexpected = _leftovers(model, ckpt_keys, set(found.values()), to_model, in_base)
    if unexpected:
        raise ValueError(
            f"{ckpt.folder}: {len(unexpected)} checkpoint weight(s) have no place in {name}: "
            + ", ".join(unexpected[:10])
            + " (does config.json, e.g. num_hidden_layers, match the weights?)"
        )
    if ignored:
        logger.info("%s: ignored %d checkpoint weights not used by %s: %s", ckpt.folder,
                    len(ignored), name, ", ".join(ignored[:20]))  # fmt: skip
    if fresh:
        logger.warning("%s: newly initialised (absent from the checkpoint): %s", name,
                       ", ".join(fresh))  # fmt: skip
    return found, fresh


def _shardings(flat, mesh: jax.sharding.Mesh, rules) -> dict[tuple, jax.sharding.NamedSharding]:
    """The ``NamedSharding`` of every variable path, from its logical axis names."""
    rules = DEFAULT_RULES if rules is None else rules
    return {tuple(p): _sharding(v, mesh, rules) for p, v in flat}


def _sharding(var, mesh, rules):
    names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
    shape = var.get_value().shape
    return jax.sharding.NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def abstract_model(
    name_or_path: str | Path,
    task: str | None = None,
    *,
    num_labels: int | None = None,
    transform=None,
) -> nnx.Module:
    """The module tree a folder (or Hub id) describes, as shapes only: no weight is read.

    For checks that need the model's structure before it loads (which modules a PEFT config
    targets). ``transform(model) -> model`` runs on the abstract model inside the same
    ``nnx.eval_shape``, so what it adds (LoRA, adapters) stays abstract too.
    """
    folder = resolve(name_or_path)
    hf_config, module = _model_config(folder, task, {})
    build = _builder(module, hf_config, task, 0, num_labels=num_labels)
    return nnx.eval_shape(lambda: (transform or (lambda m: m))(build()))


def _builder(module, hf_config: dict[str, Any], task: str | None, seed: int, **kw):
    """A function that builds the randomly initialised model (called abstractly, then jitted)."""

    def build() -> nnx.Module:
        return module.from_hf_config(hf_config, task, rngs=nnx.Rngs(seed), **kw)

    return build


def _model_config(folder: Path, task: str | None, overrides: dict[str, Any]):
    """``(hf_config with overrides, the module implementing its model_type)``, task checked."""
    hf_config = _apply_overrides(read_config(folder), overrides, folder)
    module = model_module(hf_config, folder)
    tasks = getattr(module, "TASKS", None)
    if tasks is not None and task not in tasks:
        raise ValueError(
            f"task={task!r} is not available for model_type={hf_config['model_type']!r}; "
            f"choose one of {list(tasks)}"
        )
    return hf_config, module


def _param_table(flat) -> dict[str, tuple]:
    """``{HF key: (NNX path, shape, transpose)}`` of the model's ``nnx.Param`` leaves."""
    return {
        hf_key(p): (tuple(p), v.get_value().shape, p[-1] == "kernel")
        for p, v in flat
        if type(v) is nnx.Param
    }


def _materialise(
    flat,
    loads: dict[tuple, tuple[str, bool]],
    build,
    ckpt: Checkpoint,
    shardings: dict[tuple, jax.sharding.NamedSharding] | None,
    seed: int,
    rng_impl: str | None,
) -> None:
    """Give every abstract variable of ``flat`` its value, in place.

    ``loads`` maps the paths read from the checkpoint to ``(checkpoint key, transpose)``;
    ``shardings`` (``None``: no mesh) maps every path to its ``NamedSharding``.
    """
    values = _unloaded_values(flat, loads, build, shardings, seed, rng_impl)
    for path, var in flat:
        path = tuple(path)
        if path in values:
            var.set_value(values[path])
            continue
        (ck, transpose), dt = loads[path], var.get_value().dtype
        if shardings is None:
            var.set_value(jnp.asarray(ckpt.read(ck, None, transpose, dt)))
        else:
            var.set_value(jax.make_array_from_callback(
                var.get_value().shape, shardings[path],
                lambda idx, ck=ck, t=transpose, dt=dt: ckpt.read(ck, idx, t, dt),
            ))  # fmt: skip


def _unloaded_values(flat, loads, build, shardings, seed: int, rng_impl: str | None) -> dict:
    """``{path: value}`` of the variables not read from disk: RNG state and fresh task heads.

    Dropout RNG streams get distinct keys folded from the seed (no model build needed). Other
    variables not read from disk (fresh task heads) come from one jitted build of the model
    whose remaining outputs are dead code, so nothing else is initialised.
    """
    rng_makers, fresh_paths = {}, []
    for i, (p, v) in enumerate(flat):
        p = tuple(p)
        if p in loads:
            continue
        if isinstance(v, nnx.RngKey) and v.get_value().shape == ():
            rng_makers[p] = lambda i=i: jax.random.fold_in(jax.random.key(seed, impl=rng_impl), i)
        elif isinstance(v, nnx.RngCount):
            value = v.get_value()
            rng_makers[p] = lambda s=value.shape, d=value.dtype: jnp.zeros(s, d)
        else:
            fresh_paths.append(p)
    rng_paths = list(rng_makers)
    # Made inside a jit with the mesh's out_shardings: device_put of a process-local array onto a
    # mesh that spans several processes (multi-host) is refused.
    rng_list = jax.jit(
        lambda: [rng_makers[p]() for p in rng_paths],
        out_shardings=[shardings[p] for p in rng_paths] if shardings is not None else None,
    )()
    values = dict(zip(rng_paths, rng_list, strict=True))

    def build_fresh():
        state = dict(nnx.to_flat_state(nnx.state(build())))
        return [state[p].get_value() for p in fresh_paths]

    if fresh_paths:
        out_sh = [shardings[p] for p in fresh_paths] if shardings is not None else None
        built = jax.jit(build_fresh, out_shardings=out_sh)()
        values.update(zip(fresh_paths, built, strict=True))
    return values


def from_pretrained(
    name_or_path: str | Path,
    task: str | None = None,
    *,
    dtype=None,
    param_dtype=jnp.float32,
    num_labels: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    seed: int = 0,
    rng_impl: str | None = None,
    **config_overrides: Any,
) -> nnx.Module:
    """Build the model a Hugging Face folder (or Hub id) describes and load its weights.

    Args:
      name_or_path: local folder with config.json + model.safetensors (or a sharded index), or a
        Hub repo id (downloaded unless ``HF_HUB_OFFLINE``).
      task: ``"sequence-classification"``, ``"token-classification"``, ``"masked-lm"``,
        ``"causal-lm"`` or ``None`` (bare model returning hidden states).
      dtype: compute dtype (e.g. ``jnp.bfloat16``; ``None`` = ``param_dtype``).
      param_dtype: dtype the weights are stored in.
      num_labels: classes of a classification head (default: config.json's ``id2label``).
      mesh: place weights as sharded arrays on this mesh (read slice by slice from disk).
      rules: logical-axis -> mesh-axis rules (default ``common.DEFAULT_RULES``).
      seed: seed of freshly initialised weights (task heads absent from the checkpoint) and of
        the dropout keys.
      rng_impl: JAX PRNG implementation of the dropout keys (``jax.random.key``'s ``impl``, e.g.
        ``"threefry4x32"``); ``None`` = JAX's default (``jax_default_prng_impl``).
      **config_overrides: config.json keys to replace, e.g. ``hidden_dropout_prob=0.0``.

    Returns:
      The model in eval mode (dropout off; call ``model.train()`` to train), like transformers.

    Raises:
      FileNotFoundError: no such folder/repo, no config.json, no safetensors weights.
      ValueError: unsupported model_type or task, missing base weights, unexpected weights,
        shape mismatches, unknown override keys. Nothing is allocated before these checks pass.
    """
    folder = resolve(name_or_path)
    hf_config, module = _model_config(folder, task, config_overrides)
    ckpt = Checkpoint(folder)

    build = _builder(module, hf_config, task, seed, dtype=dtype, param_dtype=param_dtype,
                     num_labels=num_labels)  # fmt: skip
    abstract = nnx.eval_shape(build)  # shapes only: every check passes before anything allocates
    graphdef, abs_state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(abs_state))
    params = _param_table(flat)
    found, fresh = _match(abstract, params, ckpt)
    shardings = None if mesh is None else _shardings(flat, mesh, rules)
    loads = {params[k][0]: (ck, params[k][2]) for k, ck in found.items()}
    _materialise(flat, loads, build, ckpt, shardings, seed, rng_impl)
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    model.eval()
    # Which optional modules (task heads, a pooler) start random: PEFT defaults train them, and a
    # run warns when one stays frozen.
    model.fresh_modules = tuple(o for o in _optional_modules(model) if _under_any(o, fresh))
    return model
