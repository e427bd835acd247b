import sys

from r1_megatron.cli import main

sys.exit(main())
