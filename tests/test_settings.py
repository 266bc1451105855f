"""Consumer groups follow the topic prefix unless one is set."""

from __future__ import annotations

from stream.settings import Settings


def test_groups_are_named_after_the_prefix_so_prefixes_never_share_one() -> None:
    assert Settings().group("scoring") == "streamrank-scoring"  # the names deployments have
    a, b = Settings(topic_prefix="shop-a"), Settings(topic_prefix="shop-b")
    assert a.group("alert-delivery") == "shop-a-alert-delivery"
    assert {a.group("features"), b.group("features")} == {"shop-a-features", "shop-b-features"}


def test_a_group_that_is_set_wins() -> None:
    settings = Settings(topic_prefix="shop-a", bn_group="stats", alert_delivery_group="hooks")
    assert settings.group("bn") == "stats" and settings.group("alert-delivery") == "hooks"
    assert settings.group("ads") == "shop-a-ads"
    assert settings.group("state-audit") == "shop-a-state-audit"  # no setting of its own
