import sys

from castray.agent.main import main

sys.exit(main())
