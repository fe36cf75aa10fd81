"""Model aliases the services agree on."""

from typing import Final

#: The alias the registry's gate moves to a promoted version; serving answers with the version it points to, and
#: the monitor and triggers watch that version.
CHAMPION: Final = "champion"
