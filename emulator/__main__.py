"""`python -m indexflow.emulator`: run the Gemini API emulator (see emulator.cli)."""

import sys

from .cli import main

sys.exit(main())
