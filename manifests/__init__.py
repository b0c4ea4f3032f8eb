"""The manifest contract (DESIGN.md): Parquet schema and metadata, validation,
streamed and atomic IO, ``ImageDataset``, and the bundled demo data."""
from .errors import ManifestError, RunFailed, UserError
from .images import load_image, probe_images
from .io import (OWNED, Manifest, atomic_output, claim_folder, file_sha256, input_hashes, lock_folder,
                 open_manifest, refuse_clobber, remove_owned, require_file, write_manifest, write_table)
from .schema import LABEL, ManifestMeta, check_same_classes, check_schema

__all__ = [
    "OWNED", "BadImageLog", "Batch", "ImageDataset", "LABEL", "Manifest", "ManifestError", "ManifestMeta", "Sample",
    "RunFailed", "UserError", "atomic_output", "check_same_classes", "check_schema", "claim_folder", "collate_skip_bad", "file_sha256", "lock_folder",
    "input_hashes", "load_image", "open_manifest", "probe_images", "refuse_clobber", "remove_owned", "require_file", "write_manifest", "write_table",
]

_TORCH_NAMES = {"BadImageLog", "Batch", "ImageDataset", "Sample", "collate_skip_bad"}


def __getattr__(name: str):
    """The torch-backed dataset is imported on first use, so CLIs that need no torch start fast."""
    if name in _TORCH_NAMES:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'manifests' has no attribute {name!r}")
