"""Registers ``models/icm`` with ComfyUI's folder_paths, keeping paths users added in extra_model_paths.yaml."""

from __future__ import annotations

import os

import folder_paths

from .spec import CONTEXT_FOLDER, DECODER_FOLDER


def _register(name: str, defaults: list[str], extensions: set[str]) -> None:
    paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths) + [path for path in defaults if path not in paths]
    folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def register_model_folders() -> None:
    """Decoders in ``models/icm``; saved contexts in ``output/icm_contexts`` and ``models/icm_contexts``.

    Paths users configured in extra_model_paths.yaml (keys ``icm``, ``icm_contexts``) are kept.
    """
    _register(DECODER_FOLDER, [os.path.join(folder_paths.models_dir, DECODER_FOLDER)],
              set(folder_paths.supported_pt_extensions))
    _register(
        CONTEXT_FOLDER,
        [os.path.join(folder_paths.get_output_directory(), CONTEXT_FOLDER),
         os.path.join(folder_paths.models_dir, CONTEXT_FOLDER)],
        {".safetensors"},
    )
