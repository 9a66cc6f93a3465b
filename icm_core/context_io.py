"""Former home of the context files: a thin re-export of :mod:`icm_core.io.context_files` (where the code lives),
kept so ``from icm_core.context_io import save_context, load_context`` keeps working."""

from .io.context_files import (  # noqa: F401 - re-exported public names
    FORMAT_TAG,
    FORMAT_VERSION,
    ContextFileError,
    describe_context,
    load_context,
    save_context,
)
