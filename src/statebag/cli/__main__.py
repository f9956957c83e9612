"""``python -m statebag.cli``: the ``statebag`` command."""

import sys

from . import main

sys.exit(main())
