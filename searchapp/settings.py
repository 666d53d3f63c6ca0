"""The web service's settings: the core's `Settings` plus what only the service and its
commands read (tokens, trusted hosts, generation, query restoration), read from the
environment when a command starts (never at import)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from indexer.errors import ConfigError
from indexer.settings import Settings

from .restoration.stages import parse_policy

_URL_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
MAX_TRUSTED_PROXIES = 8  # LOUPE_TRUSTED_PROXIES beyond this is surely a mistake


@dataclass(frozen=True)
class RestoreSettings:
    """The query-restoration stages' models and policy (see searchapp.restoration)."""

    pixel_model: str | None = None  # LOUPE_RESTORE_MODEL: a diffusers UNet2DModel; None: Loupe's own
    outpaint_model: str | None = None  # LOUPE_OUTPAINT_MODEL: a diffusers inpainting pipeline; None: off
    steps: int = 4  # LOUPE_RESTORE_STEPS: DDIM steps of the multi-step pixel stage
    # LOUPE_RESTORE_AUTO (e.g. "noise:pixel,unmatched:embedding"), parsed when the settings are read,
    # as ((condition, stages), ...); None: the default for the stage models' device (noise:pixel on
    # CUDA, none on CPU), resolved when they load.
    auto: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RestoreSettings":
        raw = (env.get("LOUPE_RESTORE_STEPS") or "4").strip()
        if not raw.isdigit() or not 1 <= int(raw) <= 50:
            raise ConfigError(f"LOUPE_RESTORE_STEPS={raw!r} is not a whole number from 1 to 50")
        auto = (env.get("LOUPE_RESTORE_AUTO") or "").strip() or None
        return cls(
            pixel_model=(env.get("LOUPE_RESTORE_MODEL") or "").strip() or None,
            outpaint_model=(env.get("LOUPE_OUTPAINT_MODEL") or "").strip() or None,
            steps=int(raw),
            auto=None if auto is None else tuple(parse_policy(auto).items()),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What `loupe serve` (and the commands that restore or generate) read: the core's settings
    and the service's own."""

    core: Settings
    api_token: str | None = field(default=None, repr=False)  # LOUPE_API_TOKEN: writes need it
    read_token: str | None = field(default=None, repr=False)  # LOUPE_READ_TOKEN: reads need it (or the API token)
    trusted_hosts: tuple[str, ...] = ()  # LOUPE_TRUSTED_HOSTS: Host names the server answers besides loopback
    generate_model: str | None = None  # LOUPE_GENERATE_MODEL: a diffusers pipeline; None: Loupe's own
    generated_ttl_hours: float = 168.0  # LOUPE_GENERATED_TTL_HOURS: how long generated pictures are kept
    generated_quota_mb: float = 1024.0  # LOUPE_GENERATED_QUOTA_MB: disk space generated pictures may take
    restore: RestoreSettings = RestoreSettings()
    url_prefix: str | None = None  # LOUPE_URL_PREFIX: the sub-path a reverse proxy serves Loupe under (/photos)
    # LOUPE_MIN_FREE_MB: /api/health is degraded below this much free space under LOUPE_HOME (0: never)
    min_free_mb: float = 1024.0
    # LOUPE_METRICS_TOKEN: when set, /metrics needs it (or a token that may read); else /metrics follows the read rule
    metrics_token: str | None = field(default=None, repr=False)
    # LOUPE_TRUSTED_PROXIES: reverse proxies in front of Loupe; the access log then names the client
    # that X-Forwarded-For says the outermost of them saw (0: the peer's address)
    trusted_proxies: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, core: Settings | None = None) -> "ServiceSettings":
        """The settings in `environ` (default: the process's); `core` when the core's are read
        already (with a command's overrides). An invalid value is a ConfigError naming it."""
        env = os.environ if environ is None else environ
        return cls(
            core=Settings.from_env(env) if core is None else core,
            generate_model=(env.get("LOUPE_GENERATE_MODEL") or "").strip() or None,
            generated_ttl_hours=_positive(env, "LOUPE_GENERATED_TTL_HOURS", "168", "hours"),
            generated_quota_mb=_positive(env, "LOUPE_GENERATED_QUOTA_MB", "1024", "megabytes"),
            restore=RestoreSettings.from_env(env),
            api_token=env.get("LOUPE_API_TOKEN") or None,
            read_token=env.get("LOUPE_READ_TOKEN") or None,
            trusted_hosts=tuple(h.strip().lower() for h in (env.get("LOUPE_TRUSTED_HOSTS") or "").split(",")
                                if h.strip()),
            url_prefix=parse_url_prefix(env.get("LOUPE_URL_PREFIX")),
            min_free_mb=_non_negative(env, "LOUPE_MIN_FREE_MB", "1024", "megabytes"),
            metrics_token=env.get("LOUPE_METRICS_TOKEN") or None,
            trusted_proxies=_count(env, "LOUPE_TRUSTED_PROXIES", MAX_TRUSTED_PROXIES),
        )


def parse_url_prefix(text: str | None) -> str | None:
    """`LOUPE_URL_PREFIX`: a path such as `/photos` (a trailing `/` is dropped; empty or `/`: None),
    else a ConfigError naming the variable."""
    value = (text or "").strip().rstrip("/")
    if not value:
        return None
    segments = value.split("/")
    if not value.startswith("/") or any(not part or part in (".", "..") or not _URL_SEGMENT.fullmatch(part)
                                        for part in segments[1:]):
        raise ConfigError(f"LOUPE_URL_PREFIX={text!r} is not a path such as /photos (letters, digits, '-', '_', "
                          "'.', '~' between slashes)")
    return value


def _positive(env: Mapping[str, str], name: str, default: str, unit: str) -> float:
    """The positive number `env[name]` (or `default`), else a ConfigError naming the variable."""
    text = env.get(name) or default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:  # also refuses nan
        raise ConfigError(f"{name}={text!r} is not a positive number of {unit}")
    return value


def _count(env: Mapping[str, str], name: str, most: int) -> int:
    """The whole number `env[name]` from 0 to `most` (unset: 0), else a ConfigError naming it."""
    text = (env.get(name) or "0").strip()
    if not text.isdigit() or int(text) > most:
        raise ConfigError(f"{name}={text!r} is not a whole number from 0 to {most}")
    return int(text)


def _non_negative(env: Mapping[str, str], name: str, default: str, unit: str) -> float:
    """The number `env[name]` (or `default`), 0 or more, else a ConfigError naming the variable."""
    text = (env.get(name) or default).strip()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also refuses nan
        raise ConfigError(f"{name}={text!r} is not a number of {unit}, 0 or more")
    return value
