"""Registers ``models/icm`` with ComfyUI's folder_paths, keeping paths users added in extra_model_paths.yaml."""

from __future__ import annotations

import os

import folder_paths

from .spec import DECODER_FOLDER


def register_decoder_folder() -> None:
    """Add ``<models_dir>/icm`` to the ``icm`` folder list (created on first use by the user, never by us)."""
    default = os.path.join(folder_paths.models_dir, DECODER_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(DECODER_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[DECODER_FOLDER] = (
        paths,
        set(extensions) | set(folder_paths.supported_pt_extensions),
    )
