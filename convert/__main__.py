"""``python -m lmconv`` is ``lmconv``."""

import sys

from .cli import main

sys.exit(main())
