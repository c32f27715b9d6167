"""Relative input paths of a config file, resolved against the file's folder.

``model.name_or_path``, ``model.tokenizer``, ``data.sources[].path`` and
``peft.adapters.language_adapters`` written relative in a config resolve against the config's
folder, so a config works from any current directory; a value that can be a Hub id and names no
local path stays as written. A data path that names nothing under the config's folder but
something under the current directory is refused with the path to write.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from langtune_jax.config_convert import ConfigError


def _local_path(value: str, base: Path, *, hub_name_possible: bool, key: str) -> str:
    """``value`` as an absolute path under ``base``, or unchanged when it is a Hub name.

    A relative value that exists under ``base`` (placeholders ``{split}``/``{language}`` read as
    globs) or starts with ``./``, ``../`` or ``~`` is a path. Otherwise, where a Hub name is
    possible (a model id, a Hub dataset), the value is left as given.

    Raises:
      ConfigError: a path (``key``) that is not a Hub name matches nothing under ``base`` but
        something under the current directory.
    """
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    joined = os.path.abspath(os.path.join(base, expanded))
    if not hub_name_possible:
        _check_base(key, value, base)
    if not hub_name_possible or value.startswith(("./", "../", "~")):
        return joined
    return joined if _matches(joined) else value


def _matches(path: str) -> bool:
    return bool(glob.glob(path.replace("{split}", "*").replace("{language}", "*")))


def _check_base(key: str, value: str, base: Path) -> None:
    """Refuse a relative path that names nothing under the config's folder but something under
    the current directory: the user meant the current directory (the usual mistake)."""
    cwd = Path.cwd()
    if Path(base).resolve() == cwd.resolve() or _matches(os.path.join(base, value)):
        return
    if _matches(os.path.join(cwd, value)):
        fixed = os.path.relpath(os.path.join(cwd, value), base)
        raise ConfigError(
            f"{key}: {value!r} matches nothing under the config file's folder {base} (relative "
            f"paths in a config file resolve against its folder), but it does under the current "
            f"directory: write {fixed!r} or an absolute path"
        )


def resolve_paths(data: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """Make the input paths of plain config data absolute, relative to ``base``, in place.

    Input paths are ``model.name_or_path``, ``model.tokenizer``, ``data.sources[].path`` and
    ``peft.adapters.language_adapters`` (the library, or each language's folder); a
    model or ``format: hf`` dataset that names no local folder stays a Hub id. ``run.output_dir``
    (where runs are written) stays relative to the current directory.
    """
    base = Path(base)
    model = data.get("model")
    if isinstance(model, dict):
        for key in ("name_or_path", "tokenizer"):
            if isinstance(model.get(key), str) and model[key]:
                model[key] = _local_path(
                    model[key], base, hub_name_possible=True, key=f"model.{key}"
                )
    section = data.get("data")
    sources = section.get("sources") if isinstance(section, dict) else None
    for i, src in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(src, dict) and isinstance(src.get("path"), str) and src["path"]:
            hub = src.get("format") == "hf"
            src["path"] = _local_path(
                src["path"], base, hub_name_possible=hub, key=f"data.sources[{i}].path"
            )
    peft = data.get("peft")
    adapters = peft.get("adapters") if isinstance(peft, dict) else None
    library = adapters.get("language_adapters") if isinstance(adapters, dict) else None
    if isinstance(library, str) and library:  # a language adapter library (MAD-X)
        adapters["language_adapters"] = _local_path(
            library, base, hub_name_possible=False, key="peft.adapters.language_adapters"
        )
    elif isinstance(library, dict):
        for lang, folder in library.items():
            if isinstance(folder, str) and folder:
                library[lang] = _local_path(
                    folder,
                    base,
                    hub_name_possible=False,
                    key=f"peft.adapters.language_adapters.{lang}",
                )
    return data
