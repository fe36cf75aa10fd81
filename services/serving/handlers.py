"""Serving's event handlers: ModelPromoted is queued for the background loader (see ``loader``); the consumer
never blocks on a download. RolloutRolledBack from another replica stops the same rollout here."""

from __future__ import annotations

from collections.abc import Callable

from driftloop.contracts.events import Event
from driftloop.contracts.payloads import ModelPromoted, RolloutRolledBack

from .loader import PromotionFollower
from .rollout import RolloutController


def promotion_handler(follower: PromotionFollower) -> Callable[[Event[ModelPromoted]], None]:
    def on_model_promoted(event: Event[ModelPromoted]) -> None:
        follower.on_model_promoted(event)

    return on_model_promoted


def rollback_handler(rollouts: RolloutController) -> Callable[[Event[RolloutRolledBack]], None]:
    def on_rollout_rolled_back(event: Event[RolloutRolledBack]) -> None:
        rollouts.follow_rollback(event)

    return on_rollout_rolled_back
