"""Whether a Prefect API is configured, answered without importing Prefect (which costs a second or two)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def prefect_api_configured() -> bool:
    """True when PREFECT_API_URL is set, in the environment or in the active Prefect profile.

    Read without importing Prefect: the profile file is plain TOML.
    """
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = (profiles.get("profiles") or {}).get(active) or {}
    return bool(profile.get("PREFECT_API_URL"))
