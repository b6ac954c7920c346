"""`python -m emulator`: run the Gemini API emulator (see emulator.cli)."""

import sys

from emulator.cli import main

sys.exit(main())
