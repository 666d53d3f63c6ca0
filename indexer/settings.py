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
class Settings:
    """Where Loupe keeps its data and which model and device it uses: what the core reads (the
    web service's own settings are `searchapp.settings.ServiceSettings`)."""

    home: Path
    database_url: str = field(repr=False)  # may hold a password
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"
    allowed_roots: tuple[Path, ...] = ()  # LOUPE_ALLOWED_ROOTS: folders a job started over HTTP may index
    regions: RegionSpec = RegionSpec()
    index_mmap: str = "auto"  # map index files instead of reading them: auto, on, off
    verify: bool = True  # LOUPE_VERIFY: geometric verification of image searches by default
    verify_candidates: int = 30  # LOUPE_VERIFY_CANDIDATES: top results verified per image search
    keep_gps: bool = False  # LOUPE_KEEP_GPS: record pictures' GPS coordinates, not only whether they have some

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
        return cls(
            index_mmap=index_mmap,
            home=home,
            database_url=database_url,
            model=(env.get("LOUPE_MODEL") or DEFAULT_MODEL).strip(),
            pretrained=(env.get("LOUPE_PRETRAINED") or DEFAULT_PRETRAINED).strip(),
            device=device,
            allowed_roots=parse_roots(env.get("LOUPE_ALLOWED_ROOTS")),
            regions=RegionSpec.parse(env.get("LOUPE_REGIONS"), env.get("LOUPE_REGION_PENALTY")),
            verify=_on_off(env, "LOUPE_VERIFY"),
            verify_candidates=_whole_number(env, "LOUPE_VERIFY_CANDIDATES", "30", 1, 200),
            keep_gps=parse_switch(env, "LOUPE_KEEP_GPS", default=False),
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


_SWITCH = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def parse_switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A yes/no variable: on/off, 1/0, true/false (any case); unset or empty gives
    `default`; anything else is a ConfigError naming the variable."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if text.lower() not in _SWITCH:
        raise ConfigError(f"{name}={text!r} is not one of on, off, 1, 0, true, false")
    return _SWITCH[text.lower()]


def _whole_number(env: Mapping[str, str], name: str, default: str, low: int, high: int) -> int:
    text = (env.get(name) or default).strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"{name}={text!r} is not a whole number from {low} to {high}")
    return int(text)

