"""python -m vsgx"""

import sys

from vsgx.cli.main import main

sys.exit(main())
