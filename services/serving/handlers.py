"""Serving's event handlers: ModelPromoted is queued for the background loader (see ``loader``); the consumer
never blocks on a download. RolloutRolledBack from another replica stops the same rollout here."""

from __future__ import annotations

from collections.abc import Callable

from driftloop.contracts.events import Event

from .loader import PromotionFollower
from .rollout import RolloutController


def promotion_handler(follower: PromotionFollower) -> Callable[[Event], None]:
    def on_model_promoted(event: Event) -> None:
        follower.on_model_promoted(event)

    return on_model_promoted


def rollback_handler(rollouts: RolloutController) -> Callable[[Event], None]:
    def on_rollout_rolled_back(event: Event) -> None:
        rollouts.follow_rollback(event)

    return on_rollout_rolled_back
