"""Config validation (:func:`load_config`, what ``quotad check-config`` runs): each problem once,
named by its key path, with what is really wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quotad.daemon.config import (
    MAX_COUNT,
    MAX_PRICE,
    MAX_SIZE,
    Config,
    ConfigError,
    state_dir,
)
from quotad.protocol.framing import MAX_FRAME_CEILING
from quotad.protocol.messages import MAX_WAIT_S
from tests.support.config_files import loaded, problems

PROVIDER = """
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9"
"""


def test_a_good_file_loads_and_says_where_it_came_from(tmp_path: Path) -> None:
    config = loaded(tmp_path, PROVIDER + '[models.fast]\ntargets = ["p/m"]\n')
    assert isinstance(config, Config)
    assert config.source == str(tmp_path / "quotad.toml")
    assert config.models["fast"].targets == ["p/m"]


def test_source_is_not_a_key(tmp_path: Path) -> None:
    assert problems(tmp_path, 'source = "elsewhere"\n' + PROVIDER) == ["source: unknown key"]


def test_a_date_where_a_string_is_expected(tmp_path: Path) -> None:
    assert problems(tmp_path, "[daemon]\nsocket = 2024-01-01\n") == [
        "daemon.socket: expected str, got date"
    ]


def test_a_datetime_where_a_number_is_expected(tmp_path: Path) -> None:
    assert problems(tmp_path, "[cache]\nttl_s = 2024-01-01T10:00:00\n") == [
        "cache.ttl_s: expected float, got datetime"
    ]


def test_nan_for_a_positive_number_names_the_constraint(tmp_path: Path) -> None:
    found = problems(tmp_path, "[cache]\nttl_s = nan\n")
    assert found == ["cache.ttl_s: expected float > 0.0"]
    assert "null" not in found[0]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("daemon", "max_db_mb"),  # each of these four crashed `quotad serve` as it started
        ("http", "max_body_mb"),
        ("http", "max_header_kb"),
        ("cache", "max_mb"),
        ("daemon", "drain_s"),  # a traceback and exit 1 as it stopped
        ('prices."p/m"', "input"),  # every request `internal`: a cost of nan
        ("providers.p", "timeout_s"),
        ("gates", "max_wait_s"),
    ],
)
def test_an_infinite_number_is_refused_wherever_it_stands(
    tmp_path: Path, table: str, key: str
) -> None:
    price = "output = 1\n" if table.startswith("prices") else ""
    text = f"{PROVIDER}[{table}]\n{key} = inf\n{price}" if table != "providers.p" else ""
    text = text or f"{PROVIDER}{key} = -inf\n"
    sign = "-" if table == "providers.p" else ""
    assert problems(tmp_path, text) == [f"{table}.{key}: expected a finite number, got {sign}inf"]


def test_infinite_numbers_are_reported_beside_the_other_problems(tmp_path: Path) -> None:
    text = "[gates]\nmax_wait_s = inf\nmax_queue = 0\n[cache]\nttl_s = inf\nmax_mb = -1\n"
    assert sorted(problems(tmp_path, text)) == [
        "cache.max_mb: expected float > 0.0",
        "cache.ttl_s: expected a finite number, got inf",
        "gates.max_queue: expected int >= 1",
        "gates.max_wait_s: expected a finite number, got inf",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"[cache]\nmax_mb = {MAX_SIZE + 1}\n", f"cache.max_mb: expected float <= {MAX_SIZE}"),
        ("[http]\nmax_body_mb = 1e300\n", f"http.max_body_mb: expected float <= {MAX_SIZE}"),
        ("[daemon]\nmax_db_mb = 1e20\n", f"daemon.max_db_mb: expected float <= {MAX_SIZE}"),
        (
            '[prices."p/m"]\ninput = 1e308\noutput = 1\n',
            f'prices."p/m".input: expected float <= {MAX_PRICE}',
        ),
        ("[gates]\nmax_wait_s = 86401\n", f"gates.max_wait_s: expected float <= {MAX_WAIT_S}"),
    ],
)
def test_sizes_prices_and_waits_have_a_ceiling(tmp_path: Path, text: str, expected: str) -> None:
    """A cache of 1e300 MB made `quotad status` fail (its byte count does not fit 64 bits)."""
    assert problems(tmp_path, PROVIDER + text) == [expected]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://[::1/v1", "not a valid URL (Invalid port: ':1')"),  # crashed quotad serve
        ("http://", "no host in the URL"),  # every request failed: "cannot connect to :"
        ("http://127.0.0.1:99999/v1", "port 99999: expected 1 to 65535"),
        ("http://127.0.0.1:0/v1", "port 0: expected 1 to 65535"),
        ("http://exa mple.com/v1", "white space or a control character in the URL"),
        (
            "http://host/v1\\n",
            "white space or a control character in the URL",
        ),  # a newline, TOML-escaped
        ("ftp://host/v1", "expected an http:// or https:// URL"),
    ],
)
def test_a_base_url_the_transport_cannot_reach_is_refused(
    tmp_path: Path, base_url: str, expected: str
) -> None:
    text = f'[providers.p]\nkind = "openai"\nbase_url = "{base_url}"\n'
    assert problems(tmp_path, text) == [f"providers.p.base_url: {expected}"]


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.openai.com/v1",
        "http://[::1]:8080/v1",
        "http://localhost:11434",
        "http://é.x/v1",
    ],
)
def test_a_base_url_the_transport_reaches_loads(tmp_path: Path, base_url: str) -> None:
    config = loaded(tmp_path, f'[providers.p]\nkind = "openai"\nbase_url = "{base_url}"\n')
    assert config.providers["p"].base_url == base_url


def test_names_in_the_config_hold_no_control_characters(tmp_path: Path) -> None:
    """TOML escapes can write them; as a request's names, they would reach log lines, tables
    and the operator's terminal."""
    text = (
        '[providers."p\\u001b"]\nkind = "openai"\nbase_url = "http://h/v1"\n'
        '[providers.p]\nkind = "openai"\nbase_url = "http://h/v1"\n'
        '[providers.p.models."m\\n"]\nrpm = 1\n'
        '[models.fast]\ntargets = ["p/a\\u202eb"]\n'
        '[apps."x\\ty"]\nshare = 1\n'
    )
    assert sorted(problems(tmp_path, text)) == [
        'apps."x\ty": a name cannot hold control characters (U+0009 at 1)',
        "models.fast.targets[0]: a name cannot hold control characters (U+202E at 3)",
        'providers."p\x1b": a name cannot hold control characters (U+001B at 1)',
        'providers.p.models."m\n": a name cannot hold control characters (U+000A at 1)',
    ]


def test_a_max_frame_over_the_ceiling_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, f"[daemon]\nmax_frame = {MAX_FRAME_CEILING + 1}\n") == [
        f"daemon.max_frame: expected int <= {MAX_FRAME_CEILING}"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-1", "expected float >= 0"),
        ("36501", "expected float <= 36500"),
        ("nan", "expected float >= 0"),
        ('"30d"', "expected float, got str"),
    ],
)
def test_a_bad_ledger_retention_names_its_key(tmp_path: Path, value: str, expected: str) -> None:
    found = problems(tmp_path, f"[daemon]\nledger_retention_days = {value}\n")
    assert len(found) == 1
    assert found[0].startswith(f"daemon.ledger_retention_days: {expected}")


def test_the_ledger_is_kept_whole_unless_a_retention_is_set(tmp_path: Path) -> None:
    assert loaded(tmp_path, PROVIDER).daemon.ledger_retention_days == 0
    text = "[daemon]\nledger_retention_days = 30\n" + PROVIDER
    assert loaded(tmp_path, text).daemon.ledger_retention_days == 30


def test_empty_targets_is_one_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, PROVIDER + "[models.fast]\ntargets = []\n") == [
        "models.fast.targets: expected array of length >= 1"
    ]


def test_a_missing_required_key_is_still_reported(tmp_path: Path) -> None:
    assert problems(tmp_path, '[providers.p]\nbase_url = "http://127.0.0.1:9"\n') == [
        "providers.p: object missing required field kind"
    ]


def test_a_group_name_with_a_slash_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, PROVIDER + '[models."p/m"]\ntargets = ["p/m"]\n')
    assert found == ["models.\"p/m\": a group name cannot contain '/'"]


def test_every_problem_at_once(tmp_path: Path) -> None:
    text = 'source = "x"\n' + PROVIDER + 'rpm = "many"\n[models.fast]\ntargets = []\n'
    assert sorted(problems(tmp_path, text)) == [
        "models.fast.targets: expected array of length >= 1",
        "providers.p.rpm: expected int, got str",
        "source: unknown key",
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "expected float > 0.0"),
        ("-1", "expected float > 0.0"),
        ("5000", "expected float <= 4096.0"),
        ('"lots"', "expected float, got str"),
    ],
)
def test_the_bound_on_a_provider_s_answers_is_checked(
    tmp_path: Path, value: str, problem: str
) -> None:
    assert problems(tmp_path, PROVIDER + f"max_response_mb = {value}\n") == [
        f"providers.p.max_response_mb: {problem}"
    ]
    good = loaded(tmp_path, PROVIDER + "max_response_mb = 0.5\n")
    assert good.providers["p"].max_response_mb == 0.5


# --------------------------------------------------------------------------- semantic (§11)

SEMANTIC_AND_LOCAL = """
[cache.semantic]
mode = "shadow"

[providers.local]
kind = "local"
"""


def test_semantic_caching_is_off_by_default_at_the_designs_threshold(tmp_path: Path) -> None:
    semantic = loaded(tmp_path, PROVIDER).cache.semantic
    assert (semantic.mode, semantic.threshold, semantic.max_temperature) == ("off", 0.92, 0.0)


def test_semantic_keys_are_checked(tmp_path: Path) -> None:
    text = "[cache.semantic]\nmode = 'sometimes'\nthreshold = 1.5\nmax_temperature = -1\n"
    assert sorted(problems(tmp_path, text)) == [
        "cache.semantic.max_temperature: expected float >= 0.0",
        "cache.semantic.mode: invalid enum value 'sometimes'",
        "cache.semantic.threshold: expected float <= 1.0",
    ]


def test_a_local_provider_needs_no_base_url_and_takes_none(tmp_path: Path) -> None:
    assert loaded(tmp_path, SEMANTIC_AND_LOCAL).providers["local"].kind == "local"
    text = '[providers.local]\nkind = "local"\nbase_url = "http://127.0.0.1:9"\n'
    assert problems(tmp_path, text) == [
        "providers.local.base_url: not used by kind 'local' (embeddings are computed inside "
        "the daemon)"
    ]


def test_other_providers_still_need_a_base_url(tmp_path: Path) -> None:
    assert problems(tmp_path, '[providers.p]\nkind = "openai"\n') == [
        "providers.p: object missing required field base_url"
    ]


def test_semantic_caching_needs_the_response_cache(tmp_path: Path) -> None:
    text = "[cache]\nmode = 'off'\n[cache.semantic]\nmode = 'on'\n"
    assert problems(tmp_path, text) == [
        "cache.semantic.mode: needs cache.mode = 'on' (semantic hits are answers the response "
        "cache stored)"
    ]


def test_without_the_extra_asking_for_it_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)  # as if not installed
    hint = (
        "needs the optional extra quotad[semantic], not installed (missing: wordllama); "
        "install it: uv pip install 'quotad[semantic]' (or pip install 'quotad[semantic]')"
    )
    assert problems(tmp_path, SEMANTIC_AND_LOCAL) == [
        f"cache.semantic.mode: {hint}",
        f"providers.local.kind: {hint}",
    ]
    assert problems(tmp_path, PROVIDER + SEMANTIC_AND_LOCAL.replace("shadow", "off")) == [
        f"providers.local.kind: {hint}"
    ]


def test_check_config_without_the_extra_fails_naming_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "quotad.toml"
    path.write_text(SEMANTIC_AND_LOCAL, encoding="utf-8")
    program = (
        "import sys; sys.modules['wordllama'] = None; from quotad.daemon.cli import main; "
        f"sys.exit(main(['check-config', {str(path)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "cache.semantic.mode: needs the optional extra quotad[semantic]" in output
    assert "uv pip install 'quotad[semantic]'" in output


# ---------------------------------------------------------------------------- [cluster]


def test_no_cluster_is_one_host(tmp_path: Path) -> None:
    cluster = loaded(tmp_path, PROVIDER).cluster
    assert cluster.redis_url == ""
    assert (cluster.key_prefix, cluster.on_unreachable) == ("quotad", "share")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://redis.internal",
        "unix:///run/redis.sock?db=2",
        "redis://quotad@10.0.0.5",
    ],
)
def test_a_cluster_url_of_each_kind_loads(tmp_path: Path, url: str) -> None:
    assert loaded(tmp_path, f'[cluster]\nredis_url = "{url}"\n').cluster.redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://redis:6379", "expected a redis://, rediss:// or unix:// URL, got http scheme"),
        ("redis://:hunter2@redis", "a password in the URL: never in the file"),
        ("redis://user:hunter2@redis", "a password in the URL: never in the file"),
        ("redis://redis?password=hunter2", "a password in the URL: never in the file"),
        ("redis://redis?ssl_cert_reqs=none", "unsupported URL parameter 'ssl_cert_reqs'"),
        ("unix://relative.sock", "unix:// needs an absolute socket path"),
        ("redis://redis/zero", "the database must be a number, got 'zero'"),
        ("redis://", "no host in the URL"),
        ("redis://redis:99999", "not a valid URL"),
    ],
)
def test_a_bad_cluster_url_names_the_key_and_never_echoes_a_password(
    tmp_path: Path, url: str, problem: str
) -> None:
    found = problems(tmp_path, f'[cluster]\nredis_url = "{url}"\n')
    assert len(found) == 1
    assert found[0].startswith("cluster.redis_url: ")
    assert problem in found[0]
    assert "hunter2" not in found[0]


def test_cluster_names_and_password_sources_are_checked(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[cluster]\nredis_url = "redis://r"\nredis_password_env = "A"\n'
        'redis_password_file = "/run/credentials/redis"\nkey_prefix = "a{b}"\nhost = "my host"\n'
        'on_unreachable = "open"\nmargin = 1.0\n',
    )
    assert found == [
        "cluster.on_unreachable: invalid enum value 'open'",
        "cluster.margin: expected float < 1.0",
        "cluster: give redis_password_env or redis_password_file, not both",
        "cluster.key_prefix: expected 1-64 of A-Z a-z 0-9 _ . -, got 'a{b}'",
        "cluster.host: expected 1-128 of A-Z a-z 0-9 _ . -, got 'my host'",
    ]


def test_a_cluster_without_the_redis_client_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    found = problems(tmp_path, '[cluster]\nredis_url = "redis://r"\n')
    assert found == [
        "cluster.redis_url: the Redis client is not installed: pip install 'quotad[cluster]'"
    ]


# --------------------------------------------------------------------------- guardrails

GUARDRAILS = """
[guardrails]
output = { secret = "mask" }
restore = true

[guardrails.input]  # TOML 1.0 (tomllib) has no line breaks inside { … }: a table instead
email = "mask"
phone = "mask"
credit_card = "block"
iban = "mask"
ip = "log"
secret = "block"

[apps.notebook.guardrails]
input = { email = "log", us_ssn = "off" }
restore = false
"""


def test_guardrails_load_as_written(tmp_path: Path) -> None:
    config = loaded(tmp_path, GUARDRAILS)
    assert config.guardrails.input["credit_card"] == "block"
    assert config.guardrails.output == {"secret": "mask"}
    assert config.guardrails.restore is True
    notebook = config.apps["notebook"].guardrails
    assert (notebook.input, notebook.output, notebook.restore) == (
        {"email": "log", "us_ssn": "off"},
        {},
        False,
    )


def test_no_guardrails_section_means_none(tmp_path: Path) -> None:
    config = loaded(tmp_path, "[apps.a]\npriority = 'low'\n")
    assert (config.guardrails.input, config.guardrails.output) == ({}, {})
    assert config.apps["a"].guardrails.restore is None


def test_guardrails_name_the_key_path_of_each_problem(tmp_path: Path) -> None:
    text = """
[guardrails]
input = { emial = "mask", email = "maks", phone = 3 }
output = { secret = "blok" }
restore = "yes"
colour = "red"

[apps.a.guardrails]
output = { ssn = "mask" }
"""
    assert sorted(problems(tmp_path, text)) == [
        "apps.a.guardrails.output.ssn: unknown entity; known: email, phone, credit_card, iban, "
        "ip, us_ssn, secret",
        "guardrails.colour: unknown key",
        "guardrails.input.email: unknown action 'maks'; known: mask, block, log, off",
        "guardrails.input.emial: unknown entity; known: email, phone, credit_card, iban, ip, "
        "us_ssn, secret",
        "guardrails.input.phone: expected an action (str), got int",
        "guardrails.output.secret: unknown action 'blok'; known: mask, block, log, off",
        "guardrails.restore: expected bool, got str",
    ]


def test_guardrails_input_must_be_a_table(tmp_path: Path) -> None:
    assert problems(tmp_path, '[guardrails]\ninput = "mask"\n') == [
        "guardrails.input: expected object, got str"
    ]


def test_the_socket_limits_and_the_lease_bound(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        "[daemon]\nmax_connections = 0\nmax_in_flight_per_connection = -1\n"
        "hello_timeout_s = 0\n[gates]\nlease_s = 900\n",
    ) == [
        "daemon.max_connections: expected int >= 1",
        "daemon.max_in_flight_per_connection: expected int >= 1",
        "daemon.hello_timeout_s: expected float > 0.0",
        "gates.lease_s: 900 is over gates.max_lease_s (600)",
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            '{ "X-Probe" = "a\\r\\nX-Injected: yes" }',
            "providers.p.headers.X-Probe: the value holds U+000D at 1; a header value may "
            "hold visible ASCII, space and tab only",
        ),
        (
            '{ "X" = "ü" }',
            "providers.p.headers.X: the value holds U+00FC at 0; a header value may hold "
            "visible ASCII, space and tab only",
        ),
        ('{ "X" = "a\\u0000" }', "providers.p.headers.X: the value holds U+0000 at 1"),
        ('{ "X\\nY" = "v" }', "providers.p.headers: header name 'X\\nY' is not a token"),
        ('{ "" = "v" }', "providers.p.headers: header name '' is not a token"),
        ('{ "Bad Name" = "v" }', "providers.p.headers: header name 'Bad Name' is not a token"),
        ('{ "Content-Length" = "5" }', "providers.p.headers.Content-Length: quotad sets this"),
        ('{ "host" = "elsewhere" }', "providers.p.headers.host: quotad sets this header"),
        ('{ "Transfer-Encoding" = "chunked" }', "providers.p.headers.Transfer-Encoding: quotad"),
        ('{ "Connection" = "close" }', "providers.p.headers.Connection: quotad sets this"),
    ],
)
def test_a_header_a_request_cannot_carry_is_refused(
    tmp_path: Path, headers: str, expected: str
) -> None:
    """A non-ASCII header value crashed the daemon at start and on a reload (httpx cannot
    encode it); CR LF in one wrote another header onto every provider request."""
    found = problems(tmp_path, PROVIDER + f"headers = {headers}\n")
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_usual_headers_load(tmp_path: Path) -> None:
    text = PROVIDER + 'headers = { "OpenAI-Organization" = "org-1", "X-Tag" = "a b\\tc ~!" }\n'
    assert loaded(tmp_path, text).providers["p"].headers["X-Tag"] == "a b\tc ~!"


@pytest.mark.parametrize(
    "where",
    ["providers.p.rpm", "providers.p.max_concurrency", "gates.max_queue", "retry.budget_min"],
)
def test_a_count_past_its_ceiling_is_refused(tmp_path: Path, where: str) -> None:
    """rpm = 2**70 was taken, served, and broke `quotad status` (its reply cannot encode it)."""
    table, _, key = where.rpartition(".")
    text = PROVIDER + ("" if table == "providers.p" else f"[{table}]\n") + f"{key} = {2**70}\n"
    assert problems(tmp_path, text) == [f"{where}: expected int <= {MAX_COUNT}"]


def test_drain_s_stops_at_a_day(tmp_path: Path) -> None:
    """drain_s = 1e308 was taken, and SIGTERM then crashed the daemon."""
    assert problems(tmp_path, "[daemon]\ndrain_s = 1e308\n") == [
        "daemon.drain_s: expected float <= 86400.0"
    ]
    assert loaded(tmp_path, "[daemon]\ndrain_s = 86400\n").daemon.drain_s == 86400


def test_a_path_key_cannot_hold_a_nul(tmp_path: Path) -> None:
    """check-config took them; serve then crashed (ValueError: embedded null byte)."""
    text = (
        '[daemon]\nsocket = "/tmp/a\\u0000b"\nstate_dir = "/tmp/\\u0000"\n'
        + PROVIDER
        + 'api_key_file = "/k\\u0000"\n[cluster]\nredis_password_file = "\\u0000"\n'
    )
    assert sorted(problems(tmp_path, text)) == [
        "cluster.redis_password_file: a path cannot hold a NUL character (at 0)",
        "daemon.socket: a path cannot hold a NUL character (at 6)",
        "daemon.state_dir: a path cannot hold a NUL character (at 5)",
        "providers.p.api_key_file: a path cannot hold a NUL character (at 2)",
    ]


def test_check_config_warns_of_a_key_serve_would_not_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config said ok (exit 0, no word) of a config whose api_key_env is unset, on which
    serve refuses to start (exit 2): it now runs serve's key resolution, and warns (the daemon
    may run where the key is)."""
    from quotad.daemon.cli import main

    monkeypatch.delenv("QUOTAD_TEST_UNSET_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "quotad.toml"
    path.write_text(PROVIDER + 'api_key_env = "QUOTAD_TEST_UNSET_KEY"\n', encoding="utf-8")
    expected = "providers.p.api_key_env: the environment variable QUOTAD_TEST_UNSET_KEY is not set"
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: ok (1 providers" in out
    assert f"quotad: warning: {expected} (quotad serve refuses" in err
    assert main(["check-config", "--json", str(path)]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert [warning.startswith(expected) for warning in warnings] == [True]


@pytest.mark.parametrize("port", ["\uff10", "\uff18\uff17\uff18\uff17", "65536", "9" * 5000])
def test_http_listen_takes_an_ascii_port_only(tmp_path: Path, port: str) -> None:
    """A fullwidth zero (U+FF10) passed str.isdigit, and int() read it as port 0 (any port)."""
    found = problems(tmp_path, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    assert found == [f"http.listen: expected 'host:port', got '127.0.0.1:{port}'"]


@pytest.mark.parametrize("value", [":", "state", ":/var/lib/quotad"])
def test_a_state_directory_variable_without_an_absolute_path_first_is_an_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """STATE_DIRECTORY=":" put quotad.db in the working directory, without a word."""
    monkeypatch.setenv("STATE_DIRECTORY", value)
    with pytest.raises(ConfigError) as refused:
        state_dir(Config())
    assert refused.value.problems[0].startswith(f"STATE_DIRECTORY={value!r}: expected an absolute")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/quotad:/var/lib/other")
    assert state_dir(Config()) == Path("/var/lib/quotad")


def test_check_config_warns_of_a_state_directory_serve_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quotad.daemon.cli import main

    monkeypatch.setenv("STATE_DIRECTORY", ":")
    path = tmp_path / "quotad.toml"
    path.write_text(PROVIDER, encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    assert "quotad: warning: STATE_DIRECTORY=':': expected an absolute" in capsys.readouterr().err
