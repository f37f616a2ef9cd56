"""Server settings. The only module that reads environment variables (docs/architecture.md).

Precedence: command-line flags > SLICEWISE_* environment variables > defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from model.config import DEVICES, PRESETS

MB = 1024 * 1024
RUNNERS = ("local", "ray")


class SettingsError(ValueError):
    """A flag or SLICEWISE_* variable with a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    workspace: Path = Path("workspace")
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    # seed a demo project into an empty workspace when the shared data is found; off for code that builds
    # Settings itself (tests), on for `slicewise serve` (from_env) unless SLICEWISE_DEMO=0 or --no-demo
    demo: bool = False
    data_dir: Path | None = None  # where to look for hippocampus/ (None: ../shared/data next to the CWD / the repo)
    max_upload_mb: float = 1024.0  # the uploaded file itself
    max_expanded_mb: float = 4096.0  # a zip's or gzip's content once unpacked (zip bomb guard)
    demo_volumes: int = 5
    log_level: str = "info"
    default_preset: str = "cpu"  # what Retrain uses when the request names no preset
    # DICOMweb servers (PACS) the admin allows, "NAME=URL"; requests name a source, never a URL
    dicomweb: tuple[str, ...] = ()
    dicomweb_credentials: Path | None = None  # JSON {"NAME": {"username", "password"} | {"token"}}
    # where training runs: "local" (a subprocess per job) or "ray" (a Ray cluster at ray_address, HOST:PORT)
    runner: str = "local"
    ray_address: str | None = None
    ray_cpus_per_job: int = 1  # what a job without a GPU asks Ray for
    ray_gpus_per_job: int = 1  # what a job on CUDA asks Ray for; more than 1 trains it data-parallel
    # first start of an empty workspace: the initial admin's password from this file (a Docker secret)
    admin_password_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", Path(self.workspace))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.admin_password_file is not None:
            object.__setattr__(self, "admin_password_file", Path(self.admin_password_file))
        if self.device not in DEVICES:
            raise SettingsError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not (0 <= int(self.port) <= 65535):
            raise SettingsError(f"port must be between 0 and 65535, got {self.port}")
        if self.default_preset not in PRESETS:
            raise SettingsError(f"default_preset must be one of {', '.join(PRESETS)}, got {self.default_preset!r}")
        object.__setattr__(self, "dicomweb", tuple(self.dicomweb))
        for entry in self.dicomweb:
            name, _, url = str(entry).partition("=")
            if not name.strip() or not url.strip().lower().startswith(("http://", "https://")):
                raise SettingsError(f"a DICOMweb source is NAME=http(s)://..., got {entry!r}")
        if self.runner not in RUNNERS:
            raise SettingsError(f"runner must be one of {', '.join(RUNNERS)}, got {self.runner!r}")
        if self.runner == "ray" and not self.ray_address:
            raise SettingsError(
                "--runner ray needs the cluster's address: --ray-address HOST:PORT (or SLICEWISE_RAY_ADDRESS)"
            )
        for name in ("ray_cpus_per_job", "ray_gpus_per_job"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_expanded_mb"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be a positive number of megabytes, got {getattr(self, name)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_expanded_bytes(self) -> int:
        return int(self.max_expanded_mb * MB)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def with_overrides(self, **overrides) -> Settings:
        """Apply the non-None values (command-line flags) on top of these settings."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict = {"demo": True}
        for name, (env, parse) in _ENV.items():
            raw = environ.get(env)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise SettingsError(f"environment variable {env}={raw!r} is invalid: {exc}") from None
        # one construction from env and flags together: a flag may complete what a variable started
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _parse_positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a positive number")
    return value


_ENV = {
    "workspace": ("SLICEWISE_WORKSPACE", Path),
    "host": ("SLICEWISE_HOST", str),
    "port": ("SLICEWISE_PORT", int),
    "device": ("SLICEWISE_DEVICE", str),
    "demo": ("SLICEWISE_DEMO", _parse_bool),
    "data_dir": ("SLICEWISE_DATA_DIR", Path),
    "max_upload_mb": ("SLICEWISE_MAX_UPLOAD_MB", _parse_positive),
    "max_expanded_mb": ("SLICEWISE_MAX_EXPANDED_MB", _parse_positive),
    "demo_volumes": ("SLICEWISE_DEMO_VOLUMES", int),
    "log_level": ("SLICEWISE_LOG_LEVEL", str),
    "default_preset": ("SLICEWISE_DEFAULT_PRESET", str),
    "dicomweb": ("SLICEWISE_DICOMWEB", lambda raw: tuple(e.strip() for e in raw.split(",") if e.strip())),
    "dicomweb_credentials": ("SLICEWISE_DICOMWEB_CREDENTIALS", Path),
    "admin_password_file": ("SLICEWISE_ADMIN_PASSWORD_FILE", Path),
    "runner": ("SLICEWISE_RUNNER", str),
    "ray_address": ("SLICEWISE_RAY_ADDRESS", str),
    "ray_cpus_per_job": ("SLICEWISE_RAY_CPUS_PER_JOB", int),
    "ray_gpus_per_job": ("SLICEWISE_RAY_GPUS_PER_JOB", int),
}

assert set(_ENV) <= {f.name for f in fields(Settings)}
