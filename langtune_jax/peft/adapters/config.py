"""``AdapterConfig`` (bottleneck and per-language adapters) and the config recorded on a model.

``apply_adapters`` (:mod:`langtune_jax.peft.adapters`) keeps the resolved config on the model as
``model._adapter_config_json``; :func:`get_adapter_config` and :func:`has_language_adapters` read it
back. :func:`count_adapter_params` is the closed-form size of a config's adapters.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Literal

import jax
from flax import nnx

#: Bottleneck reduction when neither ``adapter_size`` nor ``reduction_factor`` is set.
DEFAULT_REDUCTION_FACTOR = 16.0

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "swish": jax.nn.silu,
}
_LAYERS_RE = re.compile(r"^(all|last:(\d+)|every:(\d+))$")

# The sites (``adapters._SITES``) each placement adapts in every adapted layer.
PLACEMENT_SITES = {
    "pfeiffer": ("ffn",),
    "houlsby": ("attention", "ffn"),
    "parallel": ("ffn_parallel",),
}


@dataclasses.dataclass
class AdapterConfig:
    """Bottleneck adapters: where, how big, which layers, and per-language options.

    Attributes:
      placement: ``pfeiffer`` (after the feed-forward block), ``houlsby`` (after attention and
        after the feed-forward block) or ``parallel`` (beside the feed-forward block).
      adapter_size: bottleneck width ``m`` (e.g. 64). Give this or ``reduction_factor``.
      reduction_factor: ``m = hidden_size // reduction_factor``. If neither is given:
        ``DEFAULT_REDUCTION_FACTOR`` (16, the adapters library's Pfeiffer default).
      non_linearity: ``relu`` (Pfeiffer), ``gelu`` (exact) or ``swish`` (Houlsby's adapters lib.).
      dropout: dropout on the adapter branch during training.
      scaling: ``s`` in ``y + s * up(f(down(y)))`` (He et al. use 4 for parallel adapters).
      layers: which layers carry adapters: a list of indices (``[10, 11]``), ``"all"``,
        ``"last:N"`` (the top N layers) or ``"every:K"`` (layers ``K-1, 2K-1, ...``: every K-th
        layer counting from 1, so the top layer is included when K divides the depth).
      init: ``identity`` (down: uniform +-1/sqrt(D) as torch's ``nn.Linear``, up and biases zero:
        the adapted model equals the base model exactly at init) or ``bert`` (down and up
        ~ N(0, 0.02), biases zero: the adapters library's ``init_weights="bert"``, near identity).
      languages: per-language adapters, one stacked row per language in this order; ``None``: one
        adapter per site.
      shared_task_adapter: with ``languages``, also a shared task adapter applied after the
        language adapter (MAD-X). Without ``languages`` there is always exactly one adapter.
      fallback: ``{language: adapter_language}`` for languages without their own adapter
        (zero-shot), e.g. ``{"sw": "en"}``; read by :func:`language_rows`.
      default_fallback: for languages neither in ``languages`` nor in ``fallback``: ``"shared"``
        (no language adapter: the shared task adapter only) or a language of ``languages``.
      modules_to_save: modules trained fully and saved with the adapters (matched by path suffix,
        as in PEFT); ``None``: the model's task heads (``model.head_modules``, e.g. the new
        classifier); ``[]``: none.
      language_adapters: stacking (MAD-X): frozen, pretrained language adapters, as
        ``{language: folder}`` (each folder one language's adapter, as ``save_language_library``
        writes them) or the library folder itself (every sub-folder holding an adapter). The
        languages become ``languages`` (in this order); each example runs its language's adapter,
        then the shared task adapter (``shared_task_adapter`` must stay true), which is what
        trains. A zero-shot language with an adapter in the library uses it. Invertible adapters
        in the library come with it (set ``inv_adapter`` when training the library, not here).
      inv_adapter: ``"nice"``: an invertible adapter at the embeddings (MAD-X; the ``adapters``
        library's ``inv_adapter``), a NICE coupling block on the embedding output whose inverse
        a masked-LM head applies before its tied decoder. With ``languages`` there is one per
        language (routed like the language adapters; the shared task adapter has none); without,
        one. ``None`` (default): none. BERT-family models only.
      inv_adapter_reduction_factor: the inner width of its two MLPs, ``int(n // r)`` of their
        input width ``n = D / 2`` (MAD-X and the library use 2).
    """

    placement: Literal["pfeiffer", "houlsby", "parallel"] = "pfeiffer"
    adapter_size: int | None = None
    reduction_factor: float | None = None
    non_linearity: Literal["relu", "gelu", "swish"] = "relu"
    dropout: float = 0.0
    scaling: float = 1.0
    layers: list[int] | str = "all"
    init: Literal["identity", "bert"] = "identity"
    languages: list[str] | None = None
    shared_task_adapter: bool = True
    fallback: dict[str, str] = dataclasses.field(default_factory=dict)
    default_fallback: str = "shared"
    modules_to_save: list[str] | None = None
    language_adapters: dict[str, str] | str | None = None
    inv_adapter: Literal["nice"] | None = None
    inv_adapter_reduction_factor: float = 2.0

    def __post_init__(self):
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"AdapterConfig.{field}={getattr(self, field)!r}: {why}")

        if self.placement not in PLACEMENT_SITES:
            raise bad("placement", f"expected one of {sorted(PLACEMENT_SITES)}")
        if self.non_linearity not in ACTIVATIONS:
            raise bad("non_linearity", f"expected one of {sorted(ACTIVATIONS)}")
        if self.init not in ("identity", "bert"):
            raise bad("init", "expected 'identity' or 'bert'")
        if self.adapter_size is not None and self.reduction_factor is not None:
            raise bad("adapter_size", "set adapter_size or reduction_factor, not both")
        if self.adapter_size is not None and (
            isinstance(self.adapter_size, bool) or self.adapter_size < 1
        ):
            raise bad("adapter_size", "must be a positive integer (e.g. 64)")
        if self.reduction_factor is not None and self.reduction_factor <= 0:
            raise bad("reduction_factor", "must be positive (e.g. 16)")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if self.inv_adapter not in (None, "nice"):
            raise bad("inv_adapter", "expected 'nice' (MAD-X's invertible adapter) or null")
        factor = self.inv_adapter_reduction_factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 0:
            raise bad("inv_adapter_reduction_factor", "must be a positive number (e.g. 2)")
        if self.inv_adapter is not None and self.language_adapters is not None:
            raise bad(
                "inv_adapter",
                "a MAD-X stack takes its invertible adapters from the language library "
                "(train the library with inv_adapter); leave inv_adapter unset here",
            )
        if isinstance(self.layers, str):
            m = _LAYERS_RE.match(self.layers)
            if not m or (m.group(2) or m.group(3) or "1") == "0":
                raise bad(
                    "layers", "expected a list of layer indices, 'all', 'last:N' or 'every:K'"
                )
        else:
            self.layers = list(self.layers)
            if not self.layers or any(
                isinstance(i, bool) or not isinstance(i, int) for i in self.layers
            ):
                raise bad("layers", "a list must hold at least one integer layer index")
            if len(set(self.layers)) != len(self.layers):
                raise bad("layers", "contains a layer twice")
        if self.language_adapters is not None:
            self._check_language_adapters()
        if self.languages is not None:
            self.languages = list(self.languages)
            if not self.languages or len(set(self.languages)) != len(self.languages):
                raise bad("languages", "must be a non-empty list of distinct language names")
            for lang, target in self.fallback.items():
                if lang in self.languages:
                    raise ValueError(
                        f"AdapterConfig.fallback[{lang!r}]: {lang!r} has its own adapter; remove it "
                        "from fallback"
                    )
                if target not in self.languages:
                    raise ValueError(
                        f"AdapterConfig.fallback[{lang!r}]={target!r} is not one of languages "
                        f"{self.languages}"
                    )
            if self.default_fallback != "shared" and self.default_fallback not in self.languages:
                raise bad("default_fallback", f"expected 'shared' or one of {self.languages}")
        elif self.language_adapters is None:  # else checked once the library is read
            if self.fallback:
                raise bad("fallback", "needs per-language adapters: set languages too")
            if self.default_fallback != "shared":
                raise bad("default_fallback", "needs per-language adapters: set languages too")

    def _check_language_adapters(self) -> None:
        # The folders are read by resolve_language_adapters (when the model is built), so a
        # config naming a library that a previous step will write still parses.
        if not self.language_adapters:
            raise ValueError("AdapterConfig.language_adapters is empty; name a library or folders")
        if not self.shared_task_adapter:
            raise ValueError(
                "AdapterConfig.shared_task_adapter=False: stacking on language_adapters trains the "
                "shared task adapter; set shared_task_adapter: true"
            )
        if isinstance(self.language_adapters, dict):
            self.language_adapters = dict(self.language_adapters)
            if self.languages is None:
                self.languages = list(self.language_adapters)
        if self.languages is not None and (
            isinstance(self.language_adapters, dict)
            and sorted(self.languages) != sorted(self.language_adapters)
        ):
            raise ValueError(
                f"AdapterConfig.languages={self.languages} differs from the languages of "
                f"language_adapters {sorted(self.language_adapters)}; drop languages (they come "
                "from the library)"
            )

    def resolve_language_adapters(self) -> AdapterConfig:
        """This config with ``language_adapters`` read: ``{language: folder}`` and ``languages``.

        Raises:
          ValueError: the library or a folder does not exist or holds no adapter; ``languages``
            differs from the library's.
        """
        if self.language_adapters is None:
            return self
        paths = resolve_library(self.language_adapters)
        if self.languages is not None and sorted(self.languages) != sorted(paths):
            raise ValueError(
                f"AdapterConfig.languages={self.languages} differs from the languages of "
                f"language_adapters {sorted(paths)}; drop languages (they come from the library)"
            )
        langs = list(self.languages or paths)
        return dataclasses.replace(
            self, languages=langs, language_adapters={lang: paths[lang] for lang in langs}
        )

    def bottleneck_size(self, hidden_size: int) -> int:
        """The bottleneck width ``m`` for a model of width ``hidden_size``."""
        if self.adapter_size is not None:
            return self.adapter_size
        factor = self.reduction_factor or DEFAULT_REDUCTION_FACTOR
        return max(1, int(hidden_size // factor))

    def layer_indices(self, num_layers: int) -> list[int]:
        """The adapted layer indices of a ``num_layers``-layer model, ascending."""
        if not isinstance(self.layers, str):
            wrong = [i for i in self.layers if not -num_layers <= i < num_layers]
            if wrong:
                raise ValueError(
                    f"AdapterConfig.layers={self.layers}: {wrong} out of range for a model with "
                    f"{num_layers} layers (valid 0..{num_layers - 1})"
                )
            return sorted(i % num_layers for i in self.layers)
        kind, _, n = self.layers.partition(":")
        if kind == "all":
            return list(range(num_layers))
        if kind == "last":
            return list(range(max(0, num_layers - int(n)), num_layers))
        return list(range(int(n) - 1, num_layers, int(n)))

    @property
    def adapters_per_site(self) -> int:
        """Adapters at each site: language rows plus the shared one (1 without languages)."""
        if self.languages is None:
            return 1
        return len(self.languages) + int(self.shared_task_adapter)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        return cls(**json.loads(text))


#: The file in a library folder that lists its languages (written by ``save_language_library``).
LIBRARY_FILE = "library.json"


def resolve_library(spec: dict[str, str] | str) -> dict[str, str]:
    """``{language: adapter folder}`` of a ``language_adapters`` value (a mapping or a library).

    Raises:
      ValueError: a folder that does not exist or holds no adapter (one line, naming it).
    """
    if isinstance(spec, str):
        root = Path(spec)
        listing = root / LIBRARY_FILE
        if listing.is_file():
            langs = json.loads(listing.read_text(encoding="utf-8"))["languages"]
            spec = {lang: str(root / lang) for lang in langs}
        elif root.is_dir():
            spec = {
                p.name: str(p)
                for p in sorted(root.iterdir())
                if (p / "adapters_config.json").is_file()
            }
        if isinstance(spec, str) or not spec:
            raise ValueError(
                f"AdapterConfig.language_adapters={str(root)!r} is not a language adapter library "
                "(a folder with one adapter folder per language; train one with model.task "
                "masked-lm and peft.adapters.languages)"
            )
    if not spec:
        raise ValueError("AdapterConfig.language_adapters is empty; name at least one language")
    for lang, folder in spec.items():
        if not (Path(folder) / "adapters_config.json").is_file():
            raise ValueError(
                f"AdapterConfig.language_adapters[{lang!r}]: {folder} holds no adapter "
                "(adapters_config.json missing); check the path"
            )
    return dict(spec)


# --------------------------------------------------------------------------------------------------
# Adapters recorded on a model


def get_adapter_config(model: nnx.Module) -> AdapterConfig:
    """The resolved ``AdapterConfig`` the model's adapters were built with."""
    text = getattr(model, "_adapter_config_json", None)
    if not text:
        raise ValueError(
            f"{type(model).__name__} has no bottleneck adapters; call apply_adapters(model, config)"
        )
    return AdapterConfig.from_json(text)


def has_language_adapters(model: nnx.Module) -> bool:
    """Whether ``model`` carries per-language adapters (and so needs :func:`with_routing`)."""
    text = getattr(model, "_adapter_config_json", None)
    return bool(text) and AdapterConfig.from_json(text).languages is not None


def config_of(model_or_config: nnx.Module | AdapterConfig) -> AdapterConfig:
    if isinstance(model_or_config, AdapterConfig):
        return model_or_config
    return get_adapter_config(model_or_config)


def nice_widths(hidden_size: int, reduction_factor: float) -> tuple[int, int]:
    """The inner widths of an invertible adapter's ``F`` and ``G``: ``int(n // r)`` of their
    inputs, ``n = D - D // 2`` and ``D // 2`` (the ``adapters`` library's rounding)."""
    half1, half2 = hidden_size // 2, hidden_size - hidden_size // 2
    return int(half2 // reduction_factor), int(half1 // reduction_factor)


def count_adapter_params(config: AdapterConfig, hidden_size: int, num_layers: int) -> int:
    """Closed-form number of adapter weights (``modules_to_save`` not included).

    Each adapter has ``2 D m + m + D`` weights (down kernel and bias, up kernel and bias); there
    are ``len(layers) * sites(placement) * adapters_per_site`` adapters, with sites 1 (pfeiffer,
    parallel) or 2 (houlsby) and ``adapters_per_site = len(languages) + shared`` (1 without
    languages). Invertible adapters add their two MLPs, once per language (once without).
    """
    d, m = hidden_size, config.bottleneck_size(hidden_size)
    per_adapter = 2 * d * m + m + d
    sites = len(config.layer_indices(num_layers)) * len(PLACEMENT_SITES[config.placement])
    total = sites * config.adapters_per_site * per_adapter
    if config.inv_adapter is not None:  # F: n2 -> m_f -> n1 and G: n1 -> m_g -> n2
        n1, n2 = d // 2, d - d // 2
        m_f, m_g = nice_widths(d, config.inv_adapter_reduction_factor)
        block = (n2 * m_f + m_f + m_f * n1 + n1) + (n1 * m_g + m_g + m_g * n2 + n2)
        total += block * (1 if config.languages is None else len(config.languages))
    return total
