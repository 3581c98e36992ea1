"""``python -m edgerep`` is the ``edgerep`` command (useful where the console script is not on PATH)."""

import sys

from .cli import main

sys.exit(main())
