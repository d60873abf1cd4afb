"""DESIGN's config examples, copied here as written (comments and layout included), load: users
and outside tests start from them. The only addition is a ``[providers.groq]`` table, which
§4's group names but its example does not declare."""

from __future__ import annotations

from pathlib import Path

from quotad.daemon.hints import config_hints
from tests.support.config_files import loaded

DESIGN_4_CONFIG = """\
[daemon]
socket = "/run/quotad/quotad.sock"
state_dir = "/var/lib/quotad"
durability = "normal"        # normal: survives a daemon crash; full: survives power loss

[http]
listen = "127.0.0.1:8787"    # "" turns the front door off
auth = "keys"                # keys (quotad keys create) | none

[providers.openai]
kind = "openai"              # openai (any OpenAI-compatible server) | anthropic
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"   # or api_key_file = "/run/credentials/quotad.service/openai"
rpm = 500                    # shorthand: requests per 60 s; also tpm, rpd, tpd
tpm = 200000
limits = [{ requests = 20, window_s = 2.0 }]   # any further windows
timeout_s = 60               # whole request; also connect_timeout_s
breaker = { failures = 5, failure_ratio = 0.5, window_s = 30, cooldown_s = 30, probes = 1 }
health_check_s = 0           # >0: probe GET {base_url}/models this often
max_concurrency = 64         # in-flight cap for this provider
[providers.openai.models."gpt-4o-mini"]        # per-model limits (OpenAI limits are per model)
rpm = 300
tpm = 150000

[models.fast]                # a group: what clients ask for
targets = ["groq/llama-3.1-8b-instant", "openai/gpt-4o-mini"]
strategy = "failover"        # failover | round-robin | weighted | least-busy | latency | cost
weights = [3, 1]             # weighted only

[cache]
mode = "on"                  # on | off
ttl_s = 86400
max_mb = 256
eviction = "lru"             # lru | lfu | cost (evict what saves least per byte)

[budgets]
daily_usd = 20.0
monthly_usd = 300.0
alert_at = 0.8

[apps.indexer]               # per-app policy; apps are named by clients / keys
priority = "low"             # default priority of its requests
share = 1                    # weight in fair sharing of a contended gate
daily_usd = 5.0
rpm = 60                     # per-app gate, on top of provider gates

[prices."openai/gpt-4o-mini"] # USD per 1M tokens; overrides the built-in table
input = 0.15
output = 0.60
"""

DESIGN_10_CONFIG = """\
[cluster]
redis_url = ""               # "" = one host. redis://, rediss:// or unix:// URL; password from
                             # redis_password_env / redis_password_file, never in the file itself
key_prefix = "quotad"        # several fleets may share one Redis; keys are {key_prefix}:...
host = ""                    # this daemon's name in the fleet; default: the hostname
on_unreachable = "share"     # share: each host keeps limit / hosts-seen (minus a margin) | closed
"""

DESIGN_11_CONFIG = """\
[cache.semantic]
mode = "off"                 # off | shadow (measure would-be hits, never serve them) | on
threshold = 0.92             # cosine similarity of the last user turn
max_temperature = 0.0        # only requests at or below this temperature

[providers.local]
kind = "local"               # embeddings computed inside the daemon, offline
"""

DESIGN_12_CONFIG = """\
[guardrails]
input = { email = "mask", phone = "mask", credit_card = "block", iban = "mask", ip = "log",
          secret = "block" }
output = { secret = "mask" }
restore = true               # masked values are put back into the reply the caller sees

[apps.notebook.guardrails]   # per-app override of any key above
input = { email = "log" }
"""

GROQ_PROVIDER = """
[providers.groq]
kind = "openai"
base_url = "https://api.groq.com/openai/v1"
"""


def test_the_config_of_section_4_loads_as_written(tmp_path: Path) -> None:
    config = loaded(tmp_path, DESIGN_4_CONFIG + GROQ_PROVIDER)
    fast = config.models["fast"]
    assert fast.targets == ["groq/llama-3.1-8b-instant", "openai/gpt-4o-mini"]
    assert (fast.strategy, fast.weights) == ("failover", [3, 1])
    assert config.providers["openai"].limits[0].requests == 20
    assert config.providers["openai"].models["gpt-4o-mini"].tpm == 150000
    assert config.apps["indexer"].priority == "low"
    assert config.prices["openai/gpt-4o-mini"].output == 0.60
    # "weighted only": a failover group's weights have no effect, which is said, not refused
    [hint] = config_hints(config)
    assert (hint.topic, hint.problem) == (
        "groups",
        "models.fast.weights: ignored: only strategy = 'weighted' uses them (this group's "
        "strategy is 'failover')",
    )


def test_the_guardrails_of_section_12_load_as_written(tmp_path: Path) -> None:
    """Its ``input`` table spans two lines: TOML 1.1, not 1.0 (tomllib of Python 3.11)."""
    config = loaded(tmp_path, DESIGN_12_CONFIG)
    assert config.guardrails.input == {
        "email": "mask",
        "phone": "mask",
        "credit_card": "block",
        "iban": "mask",
        "ip": "log",
        "secret": "block",
    }
    assert config.guardrails.output == {"secret": "mask"}
    assert config.guardrails.restore is True
    assert config.apps["notebook"].guardrails.input == {"email": "log"}


def test_every_example_together_is_one_valid_config(tmp_path: Path) -> None:
    text = "\n".join(
        (DESIGN_4_CONFIG, GROQ_PROVIDER, DESIGN_10_CONFIG, DESIGN_11_CONFIG, DESIGN_12_CONFIG)
    )
    config = loaded(tmp_path, text)
    assert sorted(config.providers) == ["groq", "local", "openai"]
    assert (config.cluster.redis_url, config.cluster.on_unreachable) == ("", "share")
    assert (config.cache.ttl_s, config.cache.semantic.threshold) == (86400, 0.92)
    assert config.guardrails.input["credit_card"] == "block"
    assert sorted(config.apps) == ["indexer", "notebook"]
