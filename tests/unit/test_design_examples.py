"""DESIGN's config examples, copied here as written (comments and layout included), load: users
and outside tests start from them. The only addition is a ``[providers.groq]`` table, which
§4's group names but its example does not declare."""

from __future__ import annotations

from pathlib import Path

from quotad.daemon.config import Config, load_config
from quotad.daemon.hints import config_hints

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

GROQ_PROVIDER = """
[providers.groq]
kind = "openai"
base_url = "https://api.groq.com/openai/v1"
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "quotad.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_the_config_of_section_4_loads_as_written(tmp_path: Path) -> None:
    config = load(tmp_path, DESIGN_4_CONFIG + GROQ_PROVIDER)
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
