"""Provider types found through the ``smtpconf.secret_providers`` entry-point group."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any, Iterable

from marshmallow import Schema, fields

from providers.base import CredentialRef, Discriminated, SecretProvider

GROUP = "smtpconf.secret_providers"
log = logging.getLogger("providers.registry")


class ProviderRegistry:
    """The installed provider types, by ``source`` name."""

    def __init__(self, types: Iterable[type[SecretProvider]]) -> None:
        self._types = {t.source: t for t in types}

    @classmethod
    def from_entry_points(cls, group: str = GROUP) -> "ProviderRegistry":
        """Load every plugin inside its own guard: a broken one is logged and skipped."""
        loaded: list[type[SecretProvider]] = []
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            try:
                provider = ep.load()
                if not (isinstance(provider, type) and issubclass(provider, SecretProvider)):
                    raise TypeError("not a SecretProvider subclass")
                if provider.source != ep.name:
                    raise TypeError(f"declares source {provider.source!r}")
                provider.reference_schema()
                if provider.connection_schema is not None:
                    provider.connection_schema()
            except Exception as exc:  # a plugin must never take the service down
                log.error(
                    "secret provider plugin skipped",
                    extra={"plugin": ep.name, "target": ep.value, "error": f"{type(exc).__name__}: {exc}"},
                )
                continue
            if ep.name in {t.source for t in loaded}:
                log.error("secret provider plugin skipped", extra={"plugin": ep.name, "error": "duplicate source"})
                continue
            loaded.append(provider)
        return cls(loaded)

    def get(self, source: str) -> type[SecretProvider] | None:
        return self._types.get(source)

    def sources(self) -> list[str]:
        return sorted(self._types)

    def connection_types(self) -> list[str]:
        return sorted(s for s, t in self._types.items() if t.connection_schema is not None)

    def describe(self) -> list[dict[str, Any]]:
        """Each installed type with the JSON schemas of its connection and reference documents."""
        return [
            {
                "source": source,
                "needs_connection": t.needs_connection,
                "publishes_events": t.publishes_events,
                "connection_schema": json_schema(t.connection_schema()) if t.connection_schema else None,
                "reference_schema": json_schema(t.reference_schema()),
                "description": (t.__doc__ or "").strip().splitlines()[0] if t.__doc__ else "",
            }
            for source, t in sorted(self._types.items())
        ]


def json_schema(schema: Schema) -> dict[str, Any]:
    """A JSON Schema (2020-12) for a marshmallow schema, enough to guide a client."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in schema.load_fields.items():
        key = field.data_key or name
        properties[key] = _field_schema(field)
        if field.required:
            required.append(key)
    result: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        result["required"] = required
    return result


def _variant(discriminator: str, key: str, schema: Schema) -> dict[str, Any]:
    """One choice of a discriminated document; its discriminator's ``const`` names it, so a form can offer the choices."""
    result = json_schema(schema)
    result["properties"][discriminator] = {"type": "string", "const": key}
    return result


def _field_schema(field: fields.Field) -> dict[str, Any]:
    if isinstance(field, CredentialRef):
        out: dict[str, Any] = {
            "type": "object",
            "description": 'One of {"env": NAME}, {"file": PATH}, {"internal": SECRET}',
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {k: {"type": "string"} for k in ("env", "file", "internal")},
            "additionalProperties": False,
        }
    elif isinstance(field, Discriminated):
        out = {"oneOf": [_variant(field.discriminator, key, schema()) for key, schema in field.schemas.items()]}
    elif isinstance(field, fields.Nested):
        nested = field.schema
        out = json_schema(nested)
    elif isinstance(field, fields.List):
        out = {"type": "array", "items": _field_schema(field.inner)}
    elif isinstance(field, fields.Boolean):
        out = {"type": "boolean"}
    elif isinstance(field, fields.Integer):
        out = {"type": "integer"}
    elif isinstance(field, fields.Number):
        out = {"type": "number"}
    elif isinstance(field, fields.String):
        out = {"type": "string"}
    elif isinstance(field, fields.Dict):
        out = {"type": "object"}
    else:
        out = {}
    for validator in getattr(field, "validators", []):
        choices = getattr(validator, "choices", None)
        if choices is not None:
            out["enum"] = list(choices)
        low, high = getattr(validator, "min", None), getattr(validator, "max", None)
        if type(validator).__name__ == "Range":
            if low is not None:
                out["minimum"] = low
            if high is not None:
                out["maximum"] = high
    if field.allow_none and "type" in out:
        out["type"] = [out["type"], "null"]
    if field.load_default is not None and not callable(field.load_default) and field.load_default is not fields.missing_:
        out["default"] = field.load_default
    return out
