import sys

from amoeba.cli import main

sys.exit(main())
