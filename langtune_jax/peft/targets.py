"""Which modules a PEFT method wraps: PEFT's matching rules on dotted, Hugging Face-style paths.

Every module of an NNX model has a path from the root: attribute names and ``nnx.List`` indices
joined by dots, e.g. ``bert.encoder.layer.0.attention.self.query``. Our models mirror Hugging Face
state-dict keys (see ``langtune_jax.models``), so these paths are exactly the module names that
Hugging Face PEFT matches ``target_modules`` against, and a PEFT user's configuration selects the
same layers here. The rules (``peft.tuners.tuners_utils.check_target_module_exists``):

- a list of names matches a module whose path *is* a name or *ends with* ``"." + name``;
- a string is a regular expression that must match the *whole* path (``re.fullmatch``);
- ``"all-linear"`` selects every linear layer except the output head;
- ``exclude_modules`` (list by suffix, or a full-match regex) and ``modules_to_save`` (trained fully,
  never wrapped) remove paths;
- ``layers_to_transform`` keeps only layers whose index (the first number after ``layers_pattern``,
  or after any name when no pattern is given) is listed; it applies to lists of names only.

Paths inside an existing PEFT wrapper (a module with ``_is_peft_wrapper = True``, e.g. the
``base_layer`` of a ``LoRALinear``) are never candidates, so adding a second adapter targets the
wrapper itself and nothing is wrapped twice.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence

from flax import nnx

#: Names PEFT treats as task heads when it has to guess (``SEQ_CLS_HEAD_NAMES`` plus ``lm_head``).
HEAD_NAMES = ("lm_head", "classifier", "score")
#: Shorthand for every linear layer except the output head.
ALL_LINEAR = "all-linear"


def path_str(path: Sequence[object]) -> str:
    """``("layers", 0, "q_proj")`` -> ``"layers.0.q_proj"``."""
    return ".".join(str(p) for p in path)


def named_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every sub-module of ``model`` by dotted path, in definition order (the root is left out).

    Modules inside a PEFT wrapper are left out as well: they are the wrapper's business.
    """
    out: dict[str, nnx.Module] = {}
    wrappers: list[str] = []
    for path, module in sorted(nnx.iter_modules(model), key=lambda pm: _sort_key(pm[0])):
        if not path:
            continue
        name = path_str(path)
        if any(name.startswith(w + ".") for w in wrappers):
            continue
        out[name] = module
        if getattr(module, "_is_peft_wrapper", False):
            wrappers.append(name)
    return out


def _sort_key(path: tuple) -> tuple:
    # nnx.iter_modules yields children before parents; sort to a stable, readable pre-order with
    # list indices in numeric order (layer 10 after layer 9).
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


def module_at(model: nnx.Module, path: str) -> nnx.Module:
    """The sub-module at dotted ``path`` (``""`` is the model itself)."""
    node = model
    for part in path.split(".") if path else []:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def set_module_at(model: nnx.Module, path: str, new: nnx.Module) -> None:
    """Replace the sub-module at dotted ``path`` by ``new`` (in place; ``path`` must not be ``""``)."""
    parent_path, _, last = path.rpartition(".")
    parent = module_at(model, parent_path)
    if last.isdigit():
        parent[int(last)] = new
    elif isinstance(parent, nnx.Dict):
        parent[last] = new
    else:
        setattr(parent, last, new)


def head_paths(model: nnx.Module, modules: dict[str, nnx.Module] | None = None) -> list[str]:
    """The model's output head(s): ``model.head_modules`` when present, else the last module named
    ``lm_head``, ``classifier`` or ``score`` (PEFT's guess)."""
    heads = getattr(model, "head_modules", None)
    if heads:
        return list(heads)
    modules = named_modules(model) if modules is None else modules
    named = [p for p in modules if p.rpartition(".")[2] in HEAD_NAMES]
    return named[-1:]


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _matches_names(path: str, names: str | Sequence[str]) -> bool:
    """PEFT's rule for ``exclude_modules``: a regex (full match) or a list matched by suffix."""
    if isinstance(names, str):
        return re.fullmatch(names, path) is not None
    return any(path == n or path.endswith("." + n) for n in names)


def in_modules_to_save(path: str, modules_to_save: Sequence[str] | None) -> bool:
    """Whether ``path`` is (inside) one of ``modules_to_save`` (PEFT's ``(^|.*\\.)m($|\\..*)``).

    PEFT never puts an adapter inside a module that is trained fully. The one home of this rule:
    target selection, the trainable filters and the PEFT export all ask it.
    """
    return bool(modules_to_save) and any(_save_pattern(m).match(path) for m in modules_to_save)


@functools.cache
def _save_pattern(name: str) -> re.Pattern[str]:
    # Compiled once per name: the trainable filters ask for every parameter path of the model.
    return re.compile(rf"(^|.*\.){re.escape(name)}($|\..*)")


def layer_index(path: str, layers_pattern: str | Sequence[str] | None = None) -> int | None:
    """The layer number in ``path`` as PEFT reads it, or ``None``.

    Without a pattern: the first number that follows a name (``encoder.layer.3.attention`` -> 3).
    With a pattern (e.g. ``"layer"`` or ``["layers", "h"]``): the number right after it.
    """
    if not layers_pattern:
        # PEFT's pattern, also accepting a layer list at the root (``layers.0.fc``) and a
        # targeted module that is itself the list item (``layers.0``), where PEFT finds nothing.
        m = re.match(r"(?:^|.*?\.)[^.]+\.(?P<idx>\d+)(?:\.|$)", path)
        return int(m.group("idx")) if m else None
    for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
        m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)(?:\.|$)", path)
        if m:
            return int(m.group("idx"))
    return None


def find_targets(
    model: nnx.Module,
    target_modules: str | Sequence[str],
    *,
    exclude_modules: str | Sequence[str] | None = None,
    layers_to_transform: int | Sequence[int] | None = None,
    layers_pattern: str | Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = None,
    module_types: tuple[type, ...] = (nnx.Linear,),
    what: str = "target_modules",
) -> list[str]:
    """Dotted paths of the modules selected by PEFT's matching rules, in model order.

    Args:
      model: any Flax NNX module.
      target_modules: list of names matched by suffix, a full-match regex, or ``"all-linear"``.
      exclude_modules: list of names (suffix) or a full-match regex of modules to leave alone.
      layers_to_transform: layer index or indices to keep (lists of names only, as in PEFT).
      layers_pattern: name(s) of the layer container(s) whose index ``layers_to_transform`` reads.
      modules_to_save: modules trained fully; nothing inside them is wrapped.
      module_types: the module classes the method can wrap; ``"all-linear"`` selects
        ``module_types`` too (so a ``LoRALinear`` stays targetable for a second adapter).
      what: the config field named in error messages.

    Returns:
      Paths such as ``"bert.encoder.layer.0.attention.self.query"``.

    Raises:
      ValueError: nothing matched (the message lists the paths that exist), or a matched module is
        of a type the method cannot wrap.
    """
    modules = named_modules(model)
    if isinstance(layers_to_transform, int):
        layers_to_transform = [layers_to_transform]
    is_target = _target_rule(model, modules, target_modules, layers_to_transform, layers_pattern,
                             module_types)  # fmt: skip
    found: list[str] = []
    for path, module in modules.items():
        if _excluded(path, exclude_modules, modules_to_save) or not is_target(path, module):
            continue
        _check_wrappable(path, module, modules, module_types, target_modules, what)
        found.append(path)
    if not found:
        raise ValueError(
            f"{what}={target_modules!r} matched no module of {type(model).__name__}"
            + (f" (layers_to_transform={list(layers_to_transform)})" if layers_to_transform else "")
            + (f" (exclude_modules={exclude_modules!r})" if exclude_modules else "")
            + f". Wrappable layer names: {_leaf_names(modules, module_types)}; paths such as "
            f"{_examples(modules, module_types)}."
        )
    return found


def _target_rule(
    model: nnx.Module,
    modules: dict[str, nnx.Module],
    target_modules: str | Sequence[str],
    layers_to_transform: Sequence[int] | None,
    layers_pattern: str | Sequence[str] | None,
    module_types: tuple[type, ...],
) -> Callable[[str, nnx.Module], bool]:
    """``(path, module) -> bool``: PEFT's ``target_modules`` rule (all-linear, regex or names)."""
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        heads = head_paths(model, modules)
        return lambda path, module: isinstance(module, module_types) and not _under(path, heads)
    if isinstance(target_modules, str):
        return lambda path, module: re.fullmatch(target_modules, path) is not None

    def by_name(path: str, module: nnx.Module) -> bool:
        hit = path in target_modules or any(path.endswith("." + t) for t in target_modules)
        if hit and layers_to_transform:
            hit = layer_index(path, layers_pattern) in layers_to_transform
        return hit

    return by_name


def _excluded(
    path: str, exclude_modules: str | Sequence[str] | None, modules_to_save: Sequence[str] | None
) -> bool:
    """``exclude_modules`` and ``modules_to_save`` (trained fully) are never wrapped."""
    if exclude_modules and _matches_names(path, exclude_modules):
        return True
    return in_modules_to_save(path, modules_to_save)


def _check_wrappable(
    path: str,
    module: nnx.Module,
    modules: dict[str, nnx.Module],
    module_types: tuple[type, ...],
    target_modules: str | Sequence[str],
    what: str,
) -> None:
    if not isinstance(module, module_types):
        kinds = ", ".join(t.__name__ for t in module_types)
        raise ValueError(
            f"{what}={target_modules!r} matched {path!r}, a {type(module).__name__}; only "
            f"{kinds} layers can be wrapped. Name the linear layers inside it instead, e.g. "
            f"{_examples(modules, module_types, under=path)}."
        )


def _leaf_names(modules: dict[str, nnx.Module], types: tuple[type, ...]) -> list[str]:
    names = {p.rpartition(".")[2] for p, m in modules.items() if isinstance(m, types)}
    return sorted(names)


def _examples(
    modules: dict[str, nnx.Module], types: tuple[type, ...], under: str = "", n: int = 8
) -> str:
    paths = [p for p, m in modules.items() if isinstance(m, types)]
    if under:
        paths = [p for p in paths if _under(p, [under])]
    shown = paths[:n]
    more = f" ... ({len(paths) - n} more)" if len(paths) > n else ""
    return ", ".join(shown) + more if shown else "(none)"


def is_deterministic(model: nnx.Module) -> bool:
    """Whether ``model`` is in eval mode (its dropout layers are deterministic): the mode new
    dropout layers of LoRA or adapters start in, so they follow ``train()`` / ``eval()``."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Dropout) and module.deterministic is not None:
            return bool(module.deterministic)
    return False
