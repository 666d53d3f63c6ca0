"""Loupe's settings, read from the environment when a command starts (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from .errors import ConfigError
from .regions import RegionSpec

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


def default_home(environ: Mapping[str, str]) -> Path:
    """`$XDG_DATA_HOME/loupe`, falling back to `~/.local/share/loupe`."""
    xdg = environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME", str(Path.home()))) / ".local" / "share"
    return base / "loupe"


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
        from searchapp.restoration.stages import parse_policy  # light; moves with this class to searchapp

        auto = (env.get("LOUPE_RESTORE_AUTO") or "").strip() or None
        return cls(
            pixel_model=(env.get("LOUPE_RESTORE_MODEL") or "").strip() or None,
            outpaint_model=(env.get("LOUPE_OUTPAINT_MODEL") or "").strip() or None,
            steps=int(raw),
            auto=None if auto is None else tuple(parse_policy(auto).items()),
        )


@dataclass(frozen=True)
class Settings:
    """Where Loupe keeps its data and which model and device it uses."""

    home: Path
    database_url: str = field(repr=False)  # may hold a password
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"
    api_token: str | None = field(default=None, repr=False)  # LOUPE_API_TOKEN: writes need it
    read_token: str | None = field(default=None, repr=False)  # LOUPE_READ_TOKEN: reads need it (or the API token)
    allowed_roots: tuple[Path, ...] = ()  # LOUPE_ALLOWED_ROOTS: folders a job started over HTTP may index
    trusted_hosts: tuple[str, ...] = ()  # LOUPE_TRUSTED_HOSTS: Host names the server answers besides loopback
    regions: RegionSpec = RegionSpec()
    index_mmap: str = "auto"  # map index files instead of reading them: auto, on, off
    generate_model: str | None = None  # LOUPE_GENERATE_MODEL: a diffusers pipeline; None: Loupe's own
    generated_ttl_hours: float = 168.0  # how long generated pictures are kept
    generated_quota_mb: float = 1024.0  # LOUPE_GENERATED_QUOTA_MB: disk space generated pictures may take
    restore: RestoreSettings = RestoreSettings()
    verify: bool = True  # LOUPE_VERIFY: geometric verification of image searches by default
    verify_candidates: int = 30  # LOUPE_VERIFY_CANDIDATES: top results verified per image search

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(os.path.abspath(Path(env.get("LOUPE_HOME") or default_home(env)).expanduser()))
        database_url = env.get("LOUPE_DATABASE_URL") or f"sqlite:///{home / 'loupe.db'}"
        device = (env.get("LOUPE_DEVICE") or "auto").strip().lower()
        if not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
            raise ConfigError(f"LOUPE_DEVICE={device!r} is not one of auto, cpu, cuda, cuda:N")
        index_mmap = (env.get("LOUPE_INDEX_MMAP") or "auto").strip().lower()
        if index_mmap not in ("auto", "on", "off"):
            raise ConfigError(f"LOUPE_INDEX_MMAP={index_mmap!r} is not one of auto, on, off")
        generated_ttl_hours = _positive(env, "LOUPE_GENERATED_TTL_HOURS", "168", "hours")
        generated_quota_mb = _positive(env, "LOUPE_GENERATED_QUOTA_MB", "1024", "megabytes")
        return cls(
            index_mmap=index_mmap,
            generate_model=(env.get("LOUPE_GENERATE_MODEL") or "").strip() or None,
            generated_ttl_hours=generated_ttl_hours,
            generated_quota_mb=generated_quota_mb,
            restore=RestoreSettings.from_env(env),
            home=home,
            database_url=database_url,
            model=(env.get("LOUPE_MODEL") or DEFAULT_MODEL).strip(),
            pretrained=(env.get("LOUPE_PRETRAINED") or DEFAULT_PRETRAINED).strip(),
            device=device,
            api_token=env.get("LOUPE_API_TOKEN") or None,
            read_token=env.get("LOUPE_READ_TOKEN") or None,
            allowed_roots=parse_roots(env.get("LOUPE_ALLOWED_ROOTS")),
            trusted_hosts=tuple(h.strip().lower() for h in (env.get("LOUPE_TRUSTED_HOSTS") or "").split(",")
                                if h.strip()),
            regions=RegionSpec.parse(env.get("LOUPE_REGIONS"), env.get("LOUPE_REGION_PENALTY")),
            verify=_on_off(env, "LOUPE_VERIFY"),
            verify_candidates=_whole_number(env, "LOUPE_VERIFY_CANDIDATES", "30", 1, 200),
        )

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def index_path(self) -> Path:
        return self.home / "index.faiss"

    @property
    def regions_path(self) -> Path:
        return self.home / "regions.faiss"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def parse_roots(text: str | None) -> tuple[Path, ...]:
    """`LOUPE_ALLOWED_ROOTS`: absolute folders separated by `:` (empty parts ignored)."""
    roots = []
    for part in (text or "").split(":"):
        part = part.strip()
        if not part:
            continue
        path = Path(part).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"LOUPE_ALLOWED_ROOTS part {part!r} is not an absolute path")
        roots.append(Path(os.path.abspath(path)))
    return tuple(roots)


def ensure_home(home: Path) -> Path:
    """Create the data folder (owner-only, 0700) if it does not exist yet; an existing folder
    keeps its mode."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def _is_cuda_index(device: str) -> bool:
    prefix, _, number = device.partition(":")
    return prefix == "cuda" and number.isdigit()


def redact_url(url: str) -> str:
    """A database URL with its password hidden, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported as it is, minus nothing secret
        return url.split("@")[-1]


def _on_off(env: Mapping[str, str], name: str, default: str = "on") -> bool:
    text = (env.get(name) or default).strip().lower()
    if text not in ("on", "off"):
        raise ConfigError(f"{name}={text!r} is not on or off")
    return text == "on"


def _whole_number(env: Mapping[str, str], name: str, default: str, low: int, high: int) -> int:
    text = (env.get(name) or default).strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"{name}={text!r} is not a whole number from {low} to {high}")
    return int(text)


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
