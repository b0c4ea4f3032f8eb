"""The manifest contract (DESIGN.md) as code: required columns and the ``datl`` metadata.

| column | type            | meaning                                          |
| id     | string          | stable id, unique except in with-replacement samples |
| path   | string          | image file, absolute or relative to the manifest's folder |
| label  | int32, nullable | index into ``classes``; null = unlabeled         |
| labels | list<int32>     | multi-label, instead of ``label``: indexes into ``classes``; [] = unlabeled |

Any other column is carried through by every stage. The Parquet schema metadata
key ``datl`` holds JSON: classes, stage, params, inputs, version, created.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from datl.core.errors import UserError

META_KEY = b"datl"
REQUIRED = ("id", "path")
LABEL = "label"
LABELS = "labels"  # a multi-label source: a list of class indexes per image (labelsets.py)
FORMAT_VERSION = 1


class ManifestError(UserError):
    """A manifest that does not meet the contract (docs/DESIGN.md): exit 2, one line."""


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("datl")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


def _now() -> str:
    """ISO time; honours SOURCE_DATE_EPOCH so builds can be byte-reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return t.replace(microsecond=0).isoformat()


@dataclass
class ManifestMeta:
    """The JSON stored under the ``datl`` schema-metadata key."""

    classes: list[str] | None = None
    stage: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    version: str = field(default_factory=_package_version)
    created: str = field(default_factory=_now)
    format: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, default=str).encode()

    @classmethod
    def from_schema(cls, schema: pa.Schema, where: object) -> ManifestMeta | None:
        raw = (schema.metadata or {}).get(META_KEY)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ManifestError(
                where, f"its 'datl' metadata is not valid JSON ({e})", "rewrite the file with datl"
            ) from None
        if not isinstance(data, dict):
            raise ManifestError(where, "its 'datl' metadata is not a JSON object", "rewrite the file with datl")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def check_schema(schema: pa.Schema, meta: ManifestMeta | None, where: object) -> None:
    """Raise ManifestError (one line) unless ``schema`` meets the manifest contract."""
    names = schema.names
    for col in REQUIRED:
        if col not in names:
            raise ManifestError(
                where,
                f"missing required column '{col}' (has: {', '.join(names) or 'none'})",
                "a manifest needs string columns 'id' and 'path'; build one with `datl manifest build`",
            )
        if not (pa.types.is_string(schema.field(col).type) or pa.types.is_large_string(schema.field(col).type)):
            raise ManifestError(
                where, f"column '{col}' has type {schema.field(col).type}, expected string", f"cast '{col}' to string"
            )
    _check_address_columns(schema, where)
    if LABEL in names and LABELS in names:
        raise ManifestError(
            where,
            "has both a 'label' and a 'labels' column",
            "keep 'label' (one class an image) or 'labels' (a list of classes an image), not both",
        )
    if LABEL in names:
        t = schema.field(LABEL).type
        if not pa.types.is_integer(t):
            raise ManifestError(
                where,
                f"column 'label' has type {t}, expected int32",
                "store class indices (0..K-1) in 'label' and the class names in the datl metadata",
            )
    if LABELS in names:
        t = schema.field(LABELS).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_integer(t.value_type):
            raise ManifestError(
                where,
                f"column 'labels' has type {t}, expected list<int32>",
                "store each image's class indices (0..K-1) as a list in 'labels' ([] = unlabeled)",
            )
    for col in (LABEL, LABELS):
        if col in names and (meta is None or meta.classes is None):
            raise ManifestError(
                where,
                f"has a '{col}' column but no class names in its 'datl' metadata",
                "write it with datl (manifests.write_manifest or `datl manifest build`)",
            )
    if meta is not None and meta.classes is not None:
        if len(set(meta.classes)) != len(meta.classes):
            raise ManifestError(where, "its class names are not unique", "give every class a distinct name")


def _check_address_columns(schema: pa.Schema, where: object) -> None:
    """Shard addressing (address.py): offset with size (integers), row with image_column."""
    names = schema.names
    for a, b in (("offset", "size"), ("size", "offset"), ("row", "image_column"), ("image_column", "row")):
        if a in names and b not in names:
            raise ManifestError(
                where,
                f"has a '{a}' column but no '{b}'",
                "address images inside shards with offset+size (tar) or row+image_column (Parquet)",
            )
    for col in ("offset", "size", "row"):
        if col in names and not pa.types.is_integer(schema.field(col).type):
            raise ManifestError(
                where, f"column '{col}' has type {schema.field(col).type}, expected int64", f"store '{col}' as integers"
            )


def check_same_classes(
    expected: list[str], got: list[str], expected_where: object, got_where: object, fix: str
) -> None:
    """The one check that two class lists are the same, in the same order: a one-line error
    naming ``got_where`` and the first class that differs."""
    if got != expected:
        diff = next(
            (f"class {i}: '{x}' vs '{y}'" for i, (x, y) in enumerate(zip(expected, got)) if x != y),
            f"{len(expected)} vs {len(got)} classes",
        )
        raise UserError(got_where, f"has other classes than {expected_where}: the classes differ ({diff})", fix)
