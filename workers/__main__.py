"""``python -m bdia.workers [--model NAME …]``: run one worker (what ``bdia worker`` runs)."""

import sys

from .worker import main

sys.exit(main())
