"""Entry point of ``python -m icm_core``."""

from .commands.cli import main

raise SystemExit(main())
