import sys

from psr.cli import main

sys.exit(main())
