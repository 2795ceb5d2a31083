"""``python -m bdia.app [--host H] [--port P]``: run the API (what ``bdia serve`` runs)."""

import sys

from .main import cli

sys.exit(cli())
