"""``leapsmear``: smearing the leap second for clients (NTPsec's ``leapsmearinterval``).

``leapfile`` itself is a path directive (``misc.FILE_DIRECTIVES``); this module owns the
smear, which changes what clients are served and so must be asked for explicitly.
"""

from __future__ import annotations

from ..model import LeapSmearSpec
from ..state import Args, Directive, Line, State
from ..values import BadValue, parse_int

MAX_SMEAR_S = 172_800


def handle_leapsmear(state: State, line: Line) -> None:
    args = Args(line.args)
    word = args.take()
    if word is None:
        raise BadValue(f"'{line.name}' needs a number of seconds (or 'noon')")
    args.expect_end()
    if word.lower() == "noon" and line.name == "leapsmear":
        spec = LeapSmearSpec(mode="noon", interval_s=86_400, location=line.loc)
    else:
        seconds = parse_int(
            word, f"{line.name} SECONDS (0: no smear; 86400: the last day)", 0, MAX_SMEAR_S
        )
        if seconds == 0:
            state.leapsmear = None  # NTPsec: 0 turns smearing off
            return
        spec = LeapSmearSpec(mode="interval", interval_s=seconds, location=line.loc)
    if state.leapsmear is not None and state.leapsmear.location is not None:
        prev = state.leapsmear.location
        state.warn(line.loc, f"'{line.name}' replaces the smear set at {prev.filename}:{prev.line}")
    state.leapsmear = spec


_SMEAR_DOC = (
    "Smear leap seconds for clients instead of announcing them: served time absorbs the "
    "second linearly, and LI is not set while smearing. SECONDS: over the SECONDS before "
    "the leap (NTPsec's leapsmearinterval; 0 turns it off). 'noon': over 24 h from noon "
    "to noon UTC around the leap, as Google's public NTP does. Only served time is "
    "smeared; the local clock still does the leap (kernel or virtual clock). A smearing "
    "server says so at start and in the log: its clients must not mix it with servers "
    "that do not smear, or they see up to a second of disagreement. Default: no smear."
)

DIRECTIVES: dict[str, Directive] = {
    "leapsmear": Directive(handle_leapsmear, "leapsmear SECONDS|noon", _SMEAR_DOC),
    "leapsmearinterval": Directive(
        handle_leapsmear,
        "leapsmearinterval SECONDS",
        "NTPsec's name for 'leapsmear SECONDS'.",
    ),
}
