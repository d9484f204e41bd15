"""Typed settings read once from the SHOP_* environment variables (flags win over them)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MODULE_NAMES: tuple[str, ...] = ("users", "catalog", "orders", "payments", "delivery")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRANSPORTS = ("inprocess", "dramatiq")
ENVIRONMENTS = ("development", "production")
PAYMENT_PROVIDERS = ("simulated", "stripe")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


class SettingsError(ValueError):
    """A setting has a value the shop cannot start with; the message names the variable."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`count` requests per `period` seconds."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = _RATE.match(text)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"expected '<positive count>/<second|minute|hour|day>', got {text!r}")
        return cls(int(match.group(1)), _PERIODS[match.group(2)])


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the shop; see README's settings table."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./var")
    database_url: str | None = None
    module_database_urls: Mapping[str, str] = field(default_factory=dict)
    transport: str = "inprocess"
    redis_url: str = "redis://127.0.0.1:6379/0"
    admin_email: str | None = None
    admin_password: str | None = None
    rate_limit: RateLimit = RateLimit(100, 1.0)
    login_rate_limit: RateLimit = RateLimit(10, 60.0)
    auth_address_rate_limit: RateLimit = RateLimit(30, 60.0)
    inbox_retention_s: float = 7 * 86400.0
    payment_deadline_s: float = 900.0
    payment_provider_timeout_s: float = 2.0
    payment_provider_breaker_wait_s: float = 10.0
    jwt_private_key: str | None = None
    jwt_public_key: str | None = None
    log_level: str = "INFO"
    otlp_endpoint: str | None = None
    env: str = "development"
    payment_provider: str = "simulated"
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the environment; raise SettingsError naming the first invalid variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}

        def read(var: str, attr: str, convert: Any = str) -> None:
            raw = env.get(var)
            if raw is None or raw == "":
                return
            try:
                values[attr] = convert(raw)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{var}: {exc}") from None

        read("SHOP_HOST", "host")
        read("SHOP_PORT", "port", _port)
        read("SHOP_DATA_DIR", "data_dir", Path)
        read("SHOP_DATABASE_URL", "database_url", _database_url)
        read("SHOP_TRANSPORT", "transport", _choice(TRANSPORTS))
        read("SHOP_REDIS_URL", "redis_url", _redis_url)
        read("SHOP_ADMIN_EMAIL", "admin_email")
        read("SHOP_ADMIN_PASSWORD", "admin_password")
        read("SHOP_RATE_LIMIT", "rate_limit", RateLimit.parse)
        read("SHOP_LOGIN_RATE_LIMIT", "login_rate_limit", RateLimit.parse)
        read("SHOP_AUTH_ADDRESS_RATE_LIMIT", "auth_address_rate_limit", RateLimit.parse)
        read("SHOP_INBOX_RETENTION_S", "inbox_retention_s", _positive_float)
        read("SHOP_PAYMENT_DEADLINE_S", "payment_deadline_s", _positive_float)
        read("SHOP_PAYMENT_PROVIDER_TIMEOUT_S", "payment_provider_timeout_s", _positive_float)
        read("SHOP_PAYMENT_PROVIDER_BREAKER_WAIT_S", "payment_provider_breaker_wait_s", _positive_float)
        read("SHOP_JWT_PRIVATE_KEY", "jwt_private_key")
        read("SHOP_JWT_PUBLIC_KEY", "jwt_public_key")
        read("SHOP_LOG_LEVEL", "log_level", _choice(LOG_LEVELS, upper=True))
        read("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint")
        read("SHOP_ENV", "env", _choice(ENVIRONMENTS))
        read("SHOP_PAYMENT_PROVIDER", "payment_provider", _choice(PAYMENT_PROVIDERS))
        read("SHOP_STRIPE_API_KEY", "stripe_api_key", _stripe_api_key)
        read("SHOP_STRIPE_API_BASE", "stripe_api_base", _http_url)
        urls: dict[str, str] = {}
        for module in MODULE_NAMES:
            var = f"SHOP_{module.upper()}_DATABASE_URL"
            if env.get(var):
                try:
                    urls[module] = _database_url(env[var])
                except ValueError as exc:
                    raise SettingsError(f"{var}: {exc}") from None
        values["module_database_urls"] = urls
        if bool(values.get("admin_email")) != bool(values.get("admin_password")):
            raise SettingsError("SHOP_ADMIN_EMAIL and SHOP_ADMIN_PASSWORD: set both or neither")
        if values.get("admin_password") is not None and len(values["admin_password"]) < 8:
            raise SettingsError("SHOP_ADMIN_PASSWORD: must be at least 8 characters")
        settings = cls(**values)
        return replace(settings, **overrides) if overrides else settings

    def check_payment_provider(self) -> None:
        """Refuse a payment provider the payments module cannot take payments with; called at
        the start of every process that runs payments (only there: no other process needs the
        provider's key). Raises SettingsError naming the variable to set."""
        if self.payment_provider == "stripe" and not self.stripe_api_key:
            raise SettingsError("SHOP_STRIPE_API_KEY: required when SHOP_PAYMENT_PROVIDER=stripe")
        if self.env == "production" and self.payment_provider == "simulated":
            raise SettingsError(
                "SHOP_PAYMENT_PROVIDER: the simulated provider takes no real payments and is refused"
                " when SHOP_ENV=production; set SHOP_PAYMENT_PROVIDER=stripe and SHOP_STRIPE_API_KEY"
            )

    def database_url_for(self, module: str) -> str:
        """The URL of one module's database: its own, the shared one, or its SQLite file."""
        if module in self.module_database_urls:
            return self.module_database_urls[module]
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{module}.db').resolve()}"


def known_variables() -> frozenset[str]:
    """Every environment variable `Settings.from_env` reads (deployment manifests are checked
    against it). Derived from the parser itself: it runs `from_env` on an empty environment that
    records each name looked up, so a new variable is known as soon as `from_env` reads it."""
    seen = _LookupRecorder()
    Settings.from_env(seen)
    return frozenset(seen.names)


class _LookupRecorder(Mapping[str, str]):
    """An empty environment that remembers every name asked for."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a port 0..65535, got {raw!r}")
    return port


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:  # "nan" and "inf" parse as floats
        raise ValueError(f"expected a positive number, got {raw!r}")
    return value


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Any:
    def convert(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value

    return convert


def _database_url(raw: str) -> str:
    """Accept postgresql:// and sqlite:// URLs and pin them to the async drivers we use."""
    for prefix, driver in (
        ("postgresql+asyncpg://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if raw.startswith(prefix):
            return driver + raw[len(prefix) :]
    raise ValueError(f"expected a postgresql:// or sqlite:// URL, got {raw.split('://')[0]!r}://...")


def _stripe_api_key(raw: str) -> str:
    """A secret or restricted key (sk_/rk_, live or test); never echoed back."""
    if not raw.startswith(("sk_", "rk_")) or any(c.isspace() for c in raw):
        raise ValueError("expected a Stripe secret key (sk_...) or restricted key (rk_...)")
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://"):
        raise ValueError(f"expected an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a redis:// URL, got {raw!r}")
    return raw
