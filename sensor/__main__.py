import sys

from sensor.cli.entry import main

sys.exit(main())
