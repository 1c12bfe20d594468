import sys

from pactframe.cli import main

sys.exit(main())
