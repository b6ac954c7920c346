"""How often to look at a job: by its size as the batch guide advises, backing off while idle, jittered."""

from __future__ import annotations

import random


def poll_interval(items: int, idle_polls: int, configured: float | None = None) -> float:
    """Seconds to the next look: grows with job size (the seed's table) and backs off while idle."""
    if configured is not None:
        base, cap = configured, configured * 4
    elif items < 100:
        base, cap = 2.0, 5.0
    elif items < 1_000:
        base, cap = 5.0, 10.0
    elif items < 10_000:
        base, cap = 10.0, 30.0
    else:
        base, cap = 30.0, 60.0
    return min(cap, base * 1.5 ** idle_polls)




def jittered(seconds: float, spread: float = 0.1, rng: random.Random | None = None) -> float:
    """`seconds` moved by up to +-`spread` of itself, so runs started together do not poll in step."""
    if not spread:
        return seconds
    return seconds * (1.0 + (rng or random).uniform(-spread, spread))
