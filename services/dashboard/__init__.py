"""dashboard service: a web dashboard of the closed loop, served by the platform (plain HTML and inline SVG, no
CDN, no JavaScript needed).

Consumes no events: it reads the event log (``driftloop.runtime.timeline``, the database copy of every event) and asks
the other services' HTTP APIs — registry (models, versions, aliases, gate numbers), training (runs and their metrics),
monitor (drift reports per window, performance), serving (the version each model is answered with).

Emits nothing.

HTTP:
- ``GET /`` — every model with its champion, served version and latest cascade.
- ``GET /models/{model}`` — versions and aliases, runs with metrics, drift (statistic and corrected p-value per
  feature over windows) and performance charts, and the cascade timeline explained: why a retrain happened,
  which drift, which gate numbers, when serving switched.
- ``GET /v1/timeline/{model}`` — the same cascades as JSON: each step with its event id, time, cause and summary,
  plus the cascade's explanation.
A service that does not answer is shown as unavailable on the page; the page itself never fails for it.
"""
