"""Entry point of ``python -m icm_core``."""

from .cli import main

raise SystemExit(main())
