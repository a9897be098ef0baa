import sys

from sealinfer.runtime.cli.main import main

sys.exit(main())
