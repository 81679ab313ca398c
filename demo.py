"""A local web page: draw, and watch a trained LeNet-5's layers answer live (see --help)."""

import sys

from lenet.commands.demo import main

sys.exit(main())
