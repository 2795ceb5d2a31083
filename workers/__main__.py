"""``python -m workers [--model NAME …]``: run one worker."""

import sys

from .worker import main

sys.exit(main())
