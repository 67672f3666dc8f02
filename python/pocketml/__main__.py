import sys

from pocketml.cli import main

sys.exit(main())
