"""The directive table: lower-case directive name -> handler and usage string."""

from __future__ import annotations

from ..state import Directive
from . import access, broadcasting, leap, misc, nts, refclock, service, sources, system

DIRECTIVES: dict[str, Directive] = {
    **sources.DIRECTIVES,
    **refclock.DIRECTIVES,
    **access.DIRECTIVES,
    **system.DIRECTIVES,
    **misc.DIRECTIVES,
    **service.DIRECTIVES,
    **nts.DIRECTIVES,
    **leap.DIRECTIVES,
    **broadcasting.DIRECTIVES,
}

__all__ = ["DIRECTIVES"]
