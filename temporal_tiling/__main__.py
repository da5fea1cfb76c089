"""``python -m temporal_tiling generate ...``: see :mod:`temporal_tiling.cli`."""

from .cli import main

raise SystemExit(main())
