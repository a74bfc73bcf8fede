"""``python -m causaldiffae ARGS`` runs the command line (the same as the ``causaldiffae`` script)."""

import sys

from causaldiffae.cli import main

sys.exit(main())
