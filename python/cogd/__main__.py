"""``python -m cogd``: the same as the ``cogd`` command."""

import sys

from cogd.cli import main

sys.exit(main(["cogd", *sys.argv[1:]]))
