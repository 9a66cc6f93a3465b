"""Former home of the image reader: a thin re-export of :mod:`icm_core.io.images` (where the code lives), kept so
``from icm_core.image_io import read_image, read_mask, save_image_atomic`` keeps working."""

from .io.images import (  # noqa: F401 - re-exported public names
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    ImageReadError,
    decode_file,
    image_size,
    max_image_pixels,
    pil_to_array,
    read_grey,
    read_image,
    read_mask,
    save_image_atomic,
    set_max_image_pixels,
    to_uint8,
)
