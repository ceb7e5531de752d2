"""Namespaces on the wire: the metadata that names one, and the rule a name follows. Shared by
the services (which enforce it) and the client SDK (which checks a name before sending it)."""

from __future__ import annotations

import re
from typing import Final

# The call metadata (an HTTP header through the gateway) naming the namespace a call works in.
NAMESPACE_METADATA: Final = "x-tai-namespace"
# The namespace of a call that names none: every resource made before namespaces existed.
DEFAULT_NAMESPACE: Final = "default"
# In a token's namespaces claim: every namespace (platform admins, the services' own tokens).
ALL_NAMESPACES: Final = "*"

# A DNS label without consecutive hyphens: lowercase letters, digits and single hyphens, from a
# letter to a letter or digit. Without "--", a name maps one-to-one onto a SQLite table suffix.
_NAME: Final = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){0,39}$")


def namespace_name_problem(name: str) -> str | None:
    """Why `name` is not a valid namespace name, or None when it is."""
    if _NAME.fullmatch(name):
        return None
    return (
        f"{name!r} is not a namespace name: use 1 to 40 lowercase letters, digits and single "
        "hyphens, starting with a letter and not ending with a hyphen"
    )
