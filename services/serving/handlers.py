"""Serving's event handler: ModelPromoted is queued for the background loader (see ``loader``); the consumer
never blocks on a download."""

from __future__ import annotations

from driftloop.events import Event

from .loader import PromotionFollower


def promotion_handler(follower: PromotionFollower):  # type: ignore[no-untyped-def]
    def on_model_promoted(event: Event) -> None:
        follower.on_model_promoted(event)

    return on_model_promoted
