import sys

from mlipbias.cli import main

sys.exit(main())
