"""The config reference: every key of :class:`~langtune_jax.config.RunConfig` with its type,
default, current value and one-line doc (``langtune config [CONFIG]``).

Nothing here is written twice: the keys and types come from the dataclasses' type hints, the
defaults from their fields, and the docs from each dataclass's Google-style ``Attributes:``
section (or a field's ``metadata={"doc": ...}``), so the reference cannot drift from the code.
A list of sections (``data.sources``) is shown once per item (``data.sources.0.path``), or with
``<i>`` in place of the index when the list is empty.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Literal

import yaml

from langtune_jax.config import RunConfig

_ATTR = re.compile(r"^(\s+)([A-Za-z_][\w, ]*):\s?(.*)$")
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One row of the reference.

    Attributes:
      key: the dotted key, as ``--set`` takes it (``train.steps``, ``data.sources.0.path``).
      type: the accepted type, compactly (``int``, ``float | null``, ``'lora' | 'none'``).
      default: the default, as YAML (``required`` when the key has none).
      value: the value in the config shown (the default when no config is given).
      doc: the first sentence of the key's doc.
      section: the top-level section (``run``, ``model``, ...).
    """

    key: str
    type: str
    default: str
    value: str
    doc: str
    section: str


def field_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from a dataclass's ``Attributes:`` docstring section.

    Entries may name several fields (``text_column, label_column: ...``); continuation lines
    (indented deeper) are joined. ``metadata={"doc": ...}`` on a field takes precedence.
    """
    docs: dict[str, str] = {}
    lines = (inspect.getdoc(cls) or "").splitlines()
    inside, indent, names = False, None, []
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line[0].isspace():
            break  # the next docstring section
        m = _ATTR.match(line)
        if m and (indent is None or len(m.group(1)) == indent):
            indent = len(m.group(1))
            names = [n.strip() for n in m.group(2).split(",") if n.strip()]
            for name in names:
                docs[name] = m.group(3).strip()
        elif names and line.strip():
            for name in names:
                docs[name] = (docs[name] + " " + line.strip()).strip()
    for f in dataclasses.fields(cls):
        if f.metadata.get("doc"):
            docs[f.name] = f.metadata["doc"]
    return docs


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` ("e.g." and "i.e." do not end one), inline markup removed."""
    text = text.replace("``", "").replace("`", "")
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!etc)(?<! al)[.;](\s|$)", text)
    return text[: m.start() + 1].rstrip(";").strip() if m else text.strip()


def type_label(tp: Any) -> str:
    """A compact type name: ``int``, ``float | null``, ``'a' | 'b'``, ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_label(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_label(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def show(value: Any) -> str:
    """A value as one line of YAML (``null``, ``true``, ``[q_proj, v_proj]``, ``''``)."""
    if value is _MISSING:
        return "required"
    if isinstance(value, str) and value and "\n" not in value:
        return value if yaml.safe_load(value) == value else repr(value)
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def _list_item_type(tp: Any) -> type | None:
    """The dataclass ``T`` of a ``list[T]`` hint, else None."""
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp) or (None,)
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def config_reference(config: RunConfig | None = None) -> list[KeyDoc]:
    """Every config key, in declaration order, grouped by top-level section.

    Args:
      config: a validated config whose values fill the ``value`` column; None shows the defaults.

    Returns:
      One :class:`KeyDoc` per leaf key (nested sections are walked; a list of sections gets one
      set of rows per item, or one ``<i>`` set when empty).
    """
    rows: list[KeyDoc] = []
    _walk(RunConfig, "", config, rows, section="")
    return rows


def _walk(cls: type, prefix: str, obj: Any, rows: list[KeyDoc], section: str) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = prefix + f.name, hints[f.name]
        top = section or f.name
        value = getattr(obj, f.name) if obj is not None else _MISSING
        if dataclasses.is_dataclass(tp):
            _walk(tp, key + ".", value if obj is not None else None, rows, top)
            continue
        default = _default(f)
        item_cls = _list_item_type(tp)
        if item_cls is not None:
            items = value if isinstance(value, list) else []
            rows.append(_row(key, tp, default, len(items), docs, f.name, top, count=True))
            for i, item in enumerate(items or [None]):
                _walk(item_cls, f"{key}.{i if items else '<i>'}.", item, rows, top)
            continue
        current = default if obj is None else value
        rows.append(_row(key, tp, default, current, docs, f.name, top))


def _row(key, tp, default, value, docs, name, section, count=False) -> KeyDoc:
    shown = f"{value} item(s)" if count else show(value)
    return KeyDoc(
        key=key,
        type=type_label(tp),
        default=show(default),
        value=shown,
        doc=first_sentence(docs.get(name, "")),
        section=section,
    )


def format_reference(rows: list[KeyDoc], *, show_values: bool = True) -> str:
    """The reference as aligned text: a header per section, then ``key  type  default  [value]
    doc`` per key; ``*`` marks a value that differs from its default."""
    section_docs = {
        f.name: first_sentence(inspect.getdoc(typing.get_type_hints(RunConfig)[f.name]) or "")
        for f in dataclasses.fields(RunConfig)
    }
    width = {
        "key": max(len(r.key) for r in rows),
        "type": min(36, max(len(r.type) for r in rows)),
        "default": min(24, max(len(r.default) for r in rows)),
        "value": min(32, max(len(r.value) for r in rows)),
    }
    out: list[str] = []
    for section in dict.fromkeys(r.section for r in rows):
        out.append(f"\n[{section}] {section_docs.get(section, '')}".rstrip())
        for r in (r for r in rows if r.section == section):
            cells = [r.key.ljust(width["key"]), r.type.ljust(width["type"])]
            cells.append(("default " + r.default).ljust(width["default"] + 8))
            if show_values:
                changed = r.value != r.default and not r.value.endswith("item(s)")
                mark = "*" if changed else " "
                cells.append(f"{mark}{r.value}".ljust(width["value"] + 1))
            cells.append(r.doc)
            out.append("  " + "  ".join(cells).rstrip())
    return "\n".join(out).lstrip("\n")
