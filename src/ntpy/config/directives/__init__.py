"""The directive table: lower-case directive name -> handler and usage string."""

from __future__ import annotations

from ..state import Directive
from . import access, broadcasting, misc, nts, service, sources, system

DIRECTIVES: dict[str, Directive] = {
    **sources.DIRECTIVES,
    **access.DIRECTIVES,
    **system.DIRECTIVES,
    **misc.DIRECTIVES,
    **service.DIRECTIVES,
    **nts.DIRECTIVES,
    **broadcasting.DIRECTIVES,
}

__all__ = ["DIRECTIVES"]
