"""The dashboard's Jinja2 templates (``templates/``): every value is escaped unless it is already ``Markup`` (a
rendered fragment), and a name a template uses but is not given fails loudly instead of rendering empty."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

NONE = Markup("&ndash;")  # shown for a missing value


def number(value: Any) -> Any:
    """A value for a table cell: floats with 4 decimals, a dash for None."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return NONE if value is None else value


def metrics_text(metrics: dict[str, Any] | None) -> Any:
    """``name value, ...`` of the flat metrics, by name (nested ones are left out); a dash for none."""
    if not metrics:
        return NONE
    flat = sorted((k, v) for k, v in metrics.items() if not isinstance(v, dict))
    return Markup(", ").join(Markup("{} {}").format(k, number(v)) for k, v in flat)


_env = Environment(
    loader=PackageLoader(__package__ or "driftloop.services.dashboard", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["NONE"] = NONE
_env.filters["number"] = number
_env.filters["metrics"] = metrics_text


def render(template: str, **context: Any) -> Markup:
    """``templates/<template>`` rendered with ``context``: a fragment safe to put in another template."""
    return Markup(_env.get_template(template).render(**context))
