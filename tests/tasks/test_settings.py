"""The limits rule of `Settings.quota`: a tier preset, explicit values over it, and where each value came from."""

from __future__ import annotations

import pytest

from indexflow.tasks.settings import TIERS, Settings


def settings(tmp_path, **kw) -> Settings:
    return Settings(corpus=tmp_path, **kw)


def test_explicit_rpm_and_tpm_without_a_tier_inherit_no_daily_cap_from_the_default_preset(tmp_path):
    # a tier-1 user who gave only their per-minute quota must not be stopped at the free 1,000/day
    quota = settings(tmp_path, default_tier="free", rpm=3000, tpm=1_000_000).quota
    assert (quota.limits.rpm, quota.limits.tpm, quota.limits.rpd) == (3000, 1_000_000, None)
    assert quota.preset is None
    assert quota.sources == {"rpm": "--rpm", "tpm": "--tpm", "rpd": "no --rpd, no --tier", "rpm_counts": "default"}
    assert quota.describe() == ("rpm 3000 (--rpm), tpm 1000000 (--tpm), rpd none (no --rpd, no --tier), "
                                "rpm counts texts (default)")


def test_an_explicit_tier_fills_what_is_not_given(tmp_path):
    quota = settings(tmp_path, tier="1", default_tier="free", rpm=2000).quota
    assert (quota.limits.rpm, quota.limits.tpm, quota.limits.rpd) == (2000, TIERS["1"].tpm, None)
    assert quota.describe() == "rpm 2000 (--rpm), tpm 1000000 (tier 1), rpd none (tier 1), rpm counts texts (tier 1)"
    free = settings(tmp_path, tier="free", rpm=50).quota
    assert (free.limits.rpm, free.limits.rpd, free.sources["rpd"]) == (50, 1000, "tier free")


@pytest.mark.parametrize("default_tier", ["free", "unlimited"])
def test_no_tier_and_no_values_is_the_default_preset_and_says_so(tmp_path, default_tier):
    quota = settings(tmp_path, default_tier=default_tier).quota
    assert quota.limits == TIERS[default_tier] and quota.preset == default_tier
    assert set(quota.sources.values()) == {f"tier {default_tier}, by default"}


def test_rpm_counts_alone_keeps_the_default_preset_and_is_reported(tmp_path):
    quota = settings(tmp_path, default_tier="free", rpm_counts="calls").quota
    assert quota.limits == TIERS["free"].model_copy(update={"count": "calls"})
    assert quota.sources["rpm_counts"] == "--rpm-counts" and quota.sources["rpd"] == "tier free, by default"
    assert settings(tmp_path, rpd=10).limits.count == "texts"


def test_json_facts_carry_values_and_sources(tmp_path):
    facts = settings(tmp_path, tier="2", rpd=9000, rpm_counts="calls").quota.as_dict()
    assert facts == {
        "rpm": {"value": 5000, "source": "tier 2"}, "tpm": {"value": 5_000_000, "source": "tier 2"},
        "rpd": {"value": 9000, "source": "--rpd"}, "rpm_counts": {"value": "calls", "source": "--rpm-counts"},
        "preset": "2",
    }
