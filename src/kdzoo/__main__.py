"""``python -m kdzoo`` is the ``kdzoo`` command."""
import sys

from .cli import main

sys.exit(main())
