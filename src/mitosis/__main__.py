import sys

from mitosis.cli import main

sys.exit(main())
