"""Pictures of a trained LeNet-5: filters, feature maps, saliency, mistakes, an F6 embedding (see --help)."""

import sys

from lenet.commands.visualize import main

sys.exit(main())
