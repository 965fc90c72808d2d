import sys

from fleetserve.cli.main import main

sys.exit(main())
