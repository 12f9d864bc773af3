"""ntp.conf parser: the admin's ntpd configuration -> a frozen, validated :class:`Config`.

Reads every directive of a typical ntpd ``ntp.conf`` (plus a few chrony-style and ntpy
lines) and either returns a :class:`ParseResult` or raises :class:`ConfigError` with the
``file:line`` at fault. The daemon never sees raw strings. Quick use::

    from ntpy.config import load
    result = load("/etc/ntp.conf")
    for warning in result.warnings:
        print(warning)
    config = result.config
"""

from .defaults import DEFAULT_CONFIG_TEXT, default_config
from .directives.access import RESTRICT_FLAGS
from .directives.misc import STATISTICS_NAMES, UNSUPPORTED_NTPD_DIRECTIVES
from .directives.system import SYSTEM_FLAG_NAMES
from .errors import ConfigError, ConfigErrors, ConfigWarning, SourceLocation, all_errors
from .keys import SymmetricKey, load_keys, parse_keys_text
from .model import (
    LOCAL_CLOCK_DEFAULT_STRATUM,
    AccessRule,
    Config,
    DiscardSpec,
    FilegenSpec,
    InterfaceRule,
    ListenAddress,
    LocalSpec,
    MakestepSpec,
    MruSpec,
    RateLimitSpec,
    RefclockSpec,
    RestrictRule,
    ServerSpec,
    SystemFlags,
    TinkerSpec,
    TosSpec,
)
from .parser import ParseResult, load, parse_text

__all__ = [
    "DEFAULT_CONFIG_TEXT",
    "LOCAL_CLOCK_DEFAULT_STRATUM",
    "RESTRICT_FLAGS",
    "STATISTICS_NAMES",
    "SYSTEM_FLAG_NAMES",
    "UNSUPPORTED_NTPD_DIRECTIVES",
    "AccessRule",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "ConfigWarning",
    "DiscardSpec",
    "FilegenSpec",
    "InterfaceRule",
    "ListenAddress",
    "LocalSpec",
    "MakestepSpec",
    "MruSpec",
    "ParseResult",
    "RateLimitSpec",
    "RefclockSpec",
    "RestrictRule",
    "ServerSpec",
    "SourceLocation",
    "SymmetricKey",
    "SystemFlags",
    "TinkerSpec",
    "TosSpec",
    "all_errors",
    "default_config",
    "load",
    "load_keys",
    "parse_keys_text",
    "parse_text",
]
