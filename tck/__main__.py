import sys

from tck.main import main

sys.exit(main())
