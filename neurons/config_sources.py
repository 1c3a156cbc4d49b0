"""Layered configuration with pydantic-settings: file < environment < named flags < `--set`.

Each layer is a pydantic-settings source that hands the schema raw values: the YAML file's own
types, and strings from the environment and the command line. pydantic then types every string by
its field (`"2024"` stays a string for a hotkey name, `"off"` is false only for a boolean field);
list and mapping fields take JSON, as pydantic-settings reads them from the environment. Nothing
guesses a type from the text itself.

Every value remembers where it came from, so an error names the field, the value and its source:
`axon.port: Input should be less than or equal to 65535 (given: '70000', from environment
MINER_AXON__PORT)`.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cascade.config import did_you_mean

ENV_PREFIX = "MINER_"
ENV_DELIMITER = "__"
NONE_TEXT = "null"  # an environment or command-line value that means None for an optional field

M = TypeVar("M", bound=BaseModel)


class LayerError(ValueError):
    """Values that do not fit the schema; one line per problem, each naming its source."""


class Layer(PydanticBaseSettingsSource):
    """One source as a nested dict of raw values, and a label per dotted key for error messages."""

    def __init__(self, settings_cls: type[BaseSettings], tree: dict[str, Any], labels: dict[str, str]) -> None:
        super().__init__(settings_cls)
        self.tree = tree
        self.labels = labels

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ hands over the whole tree

    def __call__(self) -> dict[str, Any]:
        return self.tree

    def source_of(self, dotted: str) -> str | None:
        """The label of the key that set `dotted` (or a section above or below it) in this layer."""
        for key, label in self.labels.items():
            if key == dotted or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                return label
        return None


def _field_at(model: type[BaseModel], dotted: str) -> FieldInfo | None:
    """The schema field a dotted key names (None: no such field; the schema reports it as extra)."""
    node: Any = model
    info: FieldInfo | None = None
    for part in dotted.split("."):
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            return None
        info = fields[part]
        node = info.annotation
        # `Section | None`, `list[X]`: look through to a model class when there is one
        for arg in getattr(node, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                node = arg
    return info


def _assign(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LayerError(f"{dotted}: {part} is not a section (from {origin})")
        node = child
    node[parts[-1]] = value


class _StringLayer(Layer):
    """Strings from the environment or the command line, put where the schema expects them."""

    def __init__(self, settings_cls: type[BaseSettings], schema: type[BaseModel],
                 items: Sequence[tuple[str, str, str | None]]) -> None:
        tree: dict[str, Any] = {}
        labels: dict[str, str] = {}
        super().__init__(settings_cls, tree, labels)
        for origin, dotted, raw in items:
            _assign(tree, dotted, self._typed_raw(schema, dotted, raw, origin), origin)
            labels[dotted] = origin

    def _typed_raw(self, schema: type[BaseModel], dotted: str, raw: str | None, origin: str) -> Any:
        field = _field_at(schema, dotted)
        if raw is None or field is None:
            return raw
        if raw == NONE_TEXT and not field.is_required() and field.default is None:
            return None
        if isinstance(raw, str) and self.field_is_complex(field):
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise LayerError(f"{dotted}: expects JSON (a list or mapping), got {raw!r} (from {origin}): "
                                 f"{exc.msg}") from exc
        return raw


def env_items(environ: Mapping[str, str]) -> Iterator[tuple[str, str, str | None]]:
    """(label, dotted key, value) for each `MINER_<SECTION>__<FIELD>` (and `MINER_<FIELD>`) variable."""
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace(ENV_DELIMITER, ".")
        if dotted and dotted != "config":  # MINER_CONFIG names the file for pm2.config.js, not a field
            yield f"environment {name}", dotted, value


_LAYERS: contextvars.ContextVar[tuple[Layer, ...]] = contextvars.ContextVar("config_layers")


def layered_config(schema: type[M], path: Path, tree: dict[str, Any], environ: Mapping[str, str],
                   flags: Sequence[tuple[str, str, str]], sets: Sequence[tuple[str, str, str]]) -> M:
    """`schema` validated from the file's `tree`, then `environ`, `flags`, `sets` (last wins).

    `flags` and `sets` are (label, dotted key, raw string). Raises LayerError with every problem.
    """
    settings_cls = _settings_class(schema)
    env = [item for item in env_items(environ)
           if _field_at(schema, item[1]) is not None or "." in item[1]]  # MINER_FOO (no field) is not ours
    file_labels = {key: f"file {path}" for key in _dotted_keys(tree)}
    layers = (
        _StringLayer(settings_cls, schema, [(label, key, value) for label, key, value in sets]),
        _StringLayer(settings_cls, schema, [(label, key, value) for label, key, value in flags]),
        _StringLayer(settings_cls, schema, env),
        Layer(settings_cls, tree, file_labels),
    )
    token = _LAYERS.set(layers)
    try:
        settings = settings_cls()
    except ValidationError as exc:
        raise LayerError(_describe(exc, layers, schema)) from exc
    finally:
        _LAYERS.reset(token)
    return schema.model_validate(settings.model_dump())


_CLASSES: dict[type[BaseModel], type[BaseSettings]] = {}


def _settings_class(schema: type[BaseModel]) -> type[BaseSettings]:
    """`schema` as a BaseSettings whose sources are the layers of the current load."""
    if schema not in _CLASSES:

        class Layered(BaseSettings, schema):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(extra="forbid")

            @classmethod
            def settings_customise_sources(cls, settings_cls: type[BaseSettings], *_: Any, **__: Any
                                           ) -> tuple[PydanticBaseSettingsSource, ...]:
                return _LAYERS.get()

        Layered.__name__ = schema.__name__
        _CLASSES[schema] = Layered
    return _CLASSES[schema]


def _dotted_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _dotted_keys(value, dotted + ".")
        else:
            yield dotted


def _describe(exc: ValidationError, layers: Sequence[Layer], schema: type[BaseModel]) -> str:
    """One line per problem: field, what is wrong, the value given, and the layer that gave it; an unknown key
    comes with the closest field names of its section (a typo is the usual cause)."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        given = error.get("input")
        origin = None
        if where:
            origin = next((label for layer in layers if (label := layer.source_of(where)) is not None), None)
        details = [] if isinstance(given, dict) else [f"given: {given!r}"]
        if origin is not None:
            details.append(f"from {origin}")
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message += did_you_mean(schema, error["loc"])
        lines.append(f"{where or '(configuration)'}: {message}" + (f" ({', '.join(details)})" if details else ""))
    return "invalid configuration:\n" + "\n".join(lines)
