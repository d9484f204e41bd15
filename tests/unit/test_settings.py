"""Settings: the defaults of ARCHITECTURE.md's table, every SHOP_* variable, and refusals that
name the variable at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from shop.cli import main
from shop.settings import MODULE_NAMES, RateLimit, Settings, SettingsError


def test_the_defaults_match_the_settings_table() -> None:
    settings = Settings.from_env({})

    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.data_dir == Path("./var")
    assert settings.database_url is None
    assert dict(settings.module_database_urls) == {}
    assert settings.transport == "inprocess"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.admin_email is None
    assert settings.admin_password is None
    assert settings.rate_limit == RateLimit(100, 1.0)
    assert settings.login_rate_limit == RateLimit(10, 60.0)
    assert settings.payment_deadline_s == 900
    assert settings.jwt_private_key is None
    assert settings.jwt_public_key is None
    assert settings.log_level == "INFO"
    assert settings.otlp_endpoint is None
    assert settings.env == "development"
    assert settings.payment_provider == "simulated"
    assert settings.stripe_api_key is None
    assert settings.stripe_api_base is None


def test_every_shop_variable_is_read() -> None:
    env = {
        "SHOP_HOST": "0.0.0.0",
        "SHOP_PORT": "9001",
        "SHOP_DATA_DIR": "/srv/shop",
        "SHOP_DATABASE_URL": "postgresql://shop@db/shop",
        "SHOP_ORDERS_DATABASE_URL": "postgresql://orders@db2/orders",
        "SHOP_TRANSPORT": "dramatiq",
        "SHOP_REDIS_URL": "redis://cache:6380/2",
        "SHOP_ADMIN_EMAIL": "boss@example.com",
        "SHOP_ADMIN_PASSWORD": "long-enough-pw",
        "SHOP_RATE_LIMIT": "50/minute",
        "SHOP_LOGIN_RATE_LIMIT": "5/hour",
        "SHOP_PAYMENT_DEADLINE_S": "30.5",
        "SHOP_PAYMENT_PROVIDER_TIMEOUT_S": "1.5",
        "SHOP_PAYMENT_PROVIDER_BREAKER_WAIT_S": "20",
        "SHOP_JWT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----x",
        "SHOP_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----y",
        "SHOP_LOG_LEVEL": "debug",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
        "SHOP_ENV": "Production",
        "SHOP_PAYMENT_PROVIDER": "stripe",
        "SHOP_STRIPE_API_KEY": "sk_live_abc123",
        "SHOP_STRIPE_API_BASE": "http://stripe-mock:12111/",
    }

    settings = Settings.from_env(env)

    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.data_dir == Path("/srv/shop")
    assert settings.database_url == "postgresql+asyncpg://shop@db/shop"
    assert dict(settings.module_database_urls) == {"orders": "postgresql+asyncpg://orders@db2/orders"}
    assert settings.transport == "dramatiq"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.admin_email == "boss@example.com"
    assert settings.admin_password == "long-enough-pw"
    assert settings.rate_limit == RateLimit(50, 60.0)
    assert settings.login_rate_limit == RateLimit(5, 3600.0)
    assert settings.payment_deadline_s == 30.5
    assert settings.payment_provider_timeout_s == 1.5
    assert settings.payment_provider_breaker_wait_s == 20.0
    assert settings.jwt_private_key == "-----BEGIN PRIVATE KEY-----x"
    assert settings.jwt_public_key == "-----BEGIN PUBLIC KEY-----y"
    assert settings.log_level == "DEBUG"
    assert settings.otlp_endpoint == "http://otel:4317"
    assert settings.env == "production"
    assert settings.payment_provider == "stripe"
    assert settings.stripe_api_key == "sk_live_abc123"
    assert settings.stripe_api_base == "http://stripe-mock:12111"


def test_empty_variables_count_as_unset() -> None:
    assert Settings.from_env({"SHOP_PORT": "", "SHOP_LOG_LEVEL": ""}) == Settings.from_env({})


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"SHOP_PORT": "9001", "SHOP_HOST": "0.0.0.0"}, port=7000)

    assert settings.port == 7000
    assert settings.host == "0.0.0.0"


def test_from_env_reads_os_environ_when_given_no_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PORT", "8123")

    assert Settings.from_env().port == 8123


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/second", RateLimit(100, 1.0)),
        ("10/minute", RateLimit(10, 60.0)),
        (" 3 / hour ", RateLimit(3, 3600.0)),
        ("1/day", RateLimit(1, 86400.0)),
    ],
)
def test_rate_limits_are_count_per_period(text: str, expected: RateLimit) -> None:
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param({"SHOP_PORT": "abc"}, "SHOP_PORT", id="port-abc"),
        pytest.param({"SHOP_PORT": "70000"}, "SHOP_PORT", id="port-70000"),
        pytest.param({"SHOP_PORT": "-1"}, "SHOP_PORT", id="port-negative"),
        pytest.param({"SHOP_RATE_LIMIT": "fast"}, "SHOP_RATE_LIMIT", id="rate-fast"),
        pytest.param({"SHOP_RATE_LIMIT": "0/second"}, "SHOP_RATE_LIMIT", id="rate-zero"),
        pytest.param({"SHOP_RATE_LIMIT": "10/fortnight"}, "SHOP_RATE_LIMIT", id="rate-period"),
        pytest.param({"SHOP_LOGIN_RATE_LIMIT": "lots"}, "SHOP_LOGIN_RATE_LIMIT", id="login-rate"),
        pytest.param({"SHOP_TRANSPORT": "kafka"}, "SHOP_TRANSPORT", id="transport-kafka"),
        pytest.param({"SHOP_LOG_LEVEL": "LOUD"}, "SHOP_LOG_LEVEL", id="log-level"),
        pytest.param({"SHOP_PAYMENT_DEADLINE_S": "-1"}, "SHOP_PAYMENT_DEADLINE_S", id="deadline-negative"),
        pytest.param({"SHOP_PAYMENT_DEADLINE_S": "0"}, "SHOP_PAYMENT_DEADLINE_S", id="deadline-zero"),
        pytest.param({"SHOP_PAYMENT_DEADLINE_S": "soon"}, "SHOP_PAYMENT_DEADLINE_S", id="deadline-text"),
        pytest.param({"SHOP_PAYMENT_DEADLINE_S": "nan"}, "SHOP_PAYMENT_DEADLINE_S", id="deadline-nan"),
        pytest.param({"SHOP_PAYMENT_DEADLINE_S": "inf"}, "SHOP_PAYMENT_DEADLINE_S", id="deadline-inf"),
        pytest.param(
            {"SHOP_PAYMENT_PROVIDER_BREAKER_WAIT_S": "0"},
            "SHOP_PAYMENT_PROVIDER_BREAKER_WAIT_S",
            id="provider-breaker-wait-zero",
        ),
        pytest.param({"SHOP_DATABASE_URL": "mysql://x"}, "SHOP_DATABASE_URL", id="database-mysql"),
        pytest.param(
            {"SHOP_PAYMENTS_DATABASE_URL": "oracle://x"}, "SHOP_PAYMENTS_DATABASE_URL", id="module-database"
        ),
        pytest.param({"SHOP_REDIS_URL": "http://x"}, "SHOP_REDIS_URL", id="redis-url"),
        pytest.param({"SHOP_ENV": "staging"}, "SHOP_ENV", id="env-staging"),
        pytest.param({"SHOP_PAYMENT_PROVIDER": "paypal"}, "SHOP_PAYMENT_PROVIDER", id="provider-paypal"),
        pytest.param(
            {"SHOP_STRIPE_API_KEY": "pk_live_x"}, "SHOP_STRIPE_API_KEY", id="stripe-publishable-key"
        ),
        pytest.param({"SHOP_STRIPE_API_BASE": "api.stripe.com"}, "SHOP_STRIPE_API_BASE", id="stripe-base"),
        pytest.param({"SHOP_ADMIN_EMAIL": "boss@example.com"}, "SHOP_ADMIN_PASSWORD", id="admin-email-only"),
        pytest.param({"SHOP_ADMIN_PASSWORD": "long-enough-pw"}, "SHOP_ADMIN_EMAIL", id="admin-password-only"),
        pytest.param(
            {"SHOP_ADMIN_EMAIL": "boss@example.com", "SHOP_ADMIN_PASSWORD": "short"},
            "SHOP_ADMIN_PASSWORD",
            id="admin-password-short",
        ),
    ],
)
def test_an_invalid_value_raises_a_settings_error_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)

    assert variable in str(raised.value)


def test_a_settings_error_does_not_echo_a_database_password() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"SHOP_DATABASE_URL": "mysql://root:hunter2@db/shop"})

    assert "hunter2" not in str(raised.value)


def test_neither_an_error_nor_the_settings_echo_a_stripe_key() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"SHOP_STRIPE_API_KEY": "pk_live_leaked"})
    assert "pk_live_leaked" not in str(raised.value)

    settings = Settings.from_env({"SHOP_STRIPE_API_KEY": "sk_live_secret"})
    assert "sk_live_secret" not in repr(settings)


def test_stripe_without_an_api_key_is_refused_naming_the_key() -> None:
    settings = Settings.from_env({"SHOP_PAYMENT_PROVIDER": "stripe"})

    with pytest.raises(SettingsError, match="SHOP_STRIPE_API_KEY"):
        settings.check_payment_provider()


def test_production_refuses_the_simulated_provider_naming_shop_payment_provider() -> None:
    settings = Settings.from_env({"SHOP_ENV": "production"})

    with pytest.raises(SettingsError, match="SHOP_PAYMENT_PROVIDER"):
        settings.check_payment_provider()


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="development-simulated"),
        pytest.param(
            {"SHOP_PAYMENT_PROVIDER": "stripe", "SHOP_STRIPE_API_KEY": "sk_test_1"}, id="dev-stripe"
        ),
        pytest.param(
            {"SHOP_ENV": "production", "SHOP_PAYMENT_PROVIDER": "stripe", "SHOP_STRIPE_API_KEY": "sk_live_1"},
            id="production-stripe",
        ),
    ],
)
def test_a_provider_that_can_take_payments_is_accepted(env: dict[str, str]) -> None:
    Settings.from_env(env).check_payment_provider()


def test_the_app_refuses_to_build_payments_with_the_simulated_provider_in_production(tmp_path: Path) -> None:
    from shop.app import create_app

    with pytest.raises(SettingsError, match="SHOP_PAYMENT_PROVIDER"):
        create_app(Settings.from_env({"SHOP_ENV": "production"}, data_dir=tmp_path))


@pytest.mark.parametrize(
    ("argv", "env", "variable"),
    [
        pytest.param(
            ["run"], {"SHOP_PAYMENT_PROVIDER": "stripe"}, "SHOP_STRIPE_API_KEY", id="run-stripe-no-key"
        ),
        pytest.param(["run"], {"SHOP_ENV": "production"}, "SHOP_PAYMENT_PROVIDER", id="run-production"),
        pytest.param(
            ["serve", "payments"], {"SHOP_ENV": "production"}, "SHOP_PAYMENT_PROVIDER", id="serve-payments"
        ),
    ],
)
def test_a_process_running_payments_exits_2_without_serving_when_it_cannot_take_payments(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    variable: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _restore_what_the_cli_sets(monkeypatch)
    monkeypatch.setattr("shop.cli.serve", lambda *_a, **_k: pytest.fail("the server must not start"))

    assert main(argv) == 2

    assert variable in capsys.readouterr().err


def test_a_process_without_payments_needs_no_payment_provider_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_ENV", "production")
    _restore_what_the_cli_sets(monkeypatch)
    served: list[str] = []
    monkeypatch.setattr("shop.cli.serve", lambda _settings, factory, **_k: served.append(factory))

    async def ready(*_args: object) -> None:  # keys, databases and Redis: not what is tested here
        return None

    monkeypatch.setattr("shop.commands.serving.preflight", ready)

    assert main(["serve", "catalog", "orders"]) == 0
    assert main(["gateway"]) == 0

    assert served == ["shop.app:create_service_app", "shop.app:create_gateway"]


def _restore_what_the_cli_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands hand settings to the server's worker through the environment: undo that."""
    for name in ("SHOP_HOST", "SHOP_PORT", "SHOP_SERVE_MODULES"):
        monkeypatch.setenv(name, "")


def test_each_module_gets_its_own_sqlite_file_in_the_data_dir_by_default(tmp_path: Path) -> None:
    settings = Settings.from_env({"SHOP_DATA_DIR": str(tmp_path)})

    urls = {module: settings.database_url_for(module) for module in MODULE_NAMES}

    for module, url in urls.items():
        assert url == f"sqlite+aiosqlite:///{(tmp_path / f'{module}.db').resolve()}"
    assert len(set(urls.values())) == len(MODULE_NAMES)


def test_shop_database_url_serves_every_module() -> None:
    settings = Settings.from_env({"SHOP_DATABASE_URL": "postgresql://shop:pw@db:5432/shop"})

    for module in MODULE_NAMES:
        assert settings.database_url_for(module) == "postgresql+asyncpg://shop:pw@db:5432/shop"


def test_a_module_database_url_serves_that_module_only() -> None:
    settings = Settings.from_env(
        {
            "SHOP_DATABASE_URL": "postgresql://shop@db/shop",
            "SHOP_PAYMENTS_DATABASE_URL": "postgres://pay@paydb/payments",
        }
    )

    assert settings.database_url_for("payments") == "postgresql+asyncpg://pay@paydb/payments"
    for module in set(MODULE_NAMES) - {"payments"}:
        assert settings.database_url_for(module) == "postgresql+asyncpg://shop@db/shop"


def test_a_module_database_url_without_a_shared_one_leaves_the_others_on_sqlite(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"SHOP_DATA_DIR": str(tmp_path), "SHOP_USERS_DATABASE_URL": "postgresql://u@db/users"}
    )

    assert settings.database_url_for("users") == "postgresql+asyncpg://u@db/users"
    assert settings.database_url_for("catalog").startswith("sqlite+aiosqlite:///")
    assert settings.database_url_for("catalog").endswith("catalog.db")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://a@h/d", "postgresql+asyncpg://a@h/d"),
        ("postgres://a@h/d", "postgresql+asyncpg://a@h/d"),
        ("postgresql+asyncpg://a@h/d", "postgresql+asyncpg://a@h/d"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ],
)
def test_database_urls_are_pinned_to_the_async_drivers(url: str, expected: str) -> None:
    assert Settings.from_env({"SHOP_DATABASE_URL": url}).database_url_for("orders") == expected


def test_shop_run_with_an_invalid_port_exits_2_naming_shop_port_without_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOP_PORT", "abc")

    def no_server(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the server must not start with invalid settings")

    monkeypatch.setattr("shop.cli.serve", no_server)

    assert main(["run"]) == 2

    captured = capsys.readouterr()
    assert "SHOP_PORT" in captured.err
    assert captured.out == ""


def test_shop_run_with_an_invalid_rate_limit_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOP_RATE_LIMIT", "fast")
    monkeypatch.setattr("shop.cli.serve", lambda *_a, **_k: pytest.fail("the server must not start"))

    assert main(["run"]) == 2

    assert "SHOP_RATE_LIMIT" in capsys.readouterr().err
