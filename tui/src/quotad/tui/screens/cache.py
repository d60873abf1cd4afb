"""Cache: hit rate (now and its trend), size against the bound, evictions and savings; the
semantic cache apart (DESIGN §11): its hits, shadow mode's would-be hits and how often their
answers agreed with the provider's."""

from __future__ import annotations

from typing import Final

from rich.text import Text
from textual.app import ComposeResult

from quotad.protocol.messages import CacheStatus
from quotad.tui.format import bar, percent, size, spark, usd
from quotad.tui.monitor import Monitor
from quotad.tui.screens.base import MonitorScreen, titled
from quotad.tui.widgets.text import LiveText

BAR_WIDTH: Final = 40
TREND_WIDTH: Final = 60


class CacheScreen(MonitorScreen):
    """The response cache as the daemon reports it, plus what the recent requests show."""

    MODE = "cache"
    TITLE = "Cache"

    def compose_body(self) -> ComposeResult:
        yield titled(LiveText(id="cache-figures"), "response cache")
        yield titled(LiveText(id="cache-semantic"), "semantic cache")
        yield titled(LiveText(id="cache-recent"), "recent requests")

    def show_body(self, monitor: Monitor) -> None:
        status = monitor.status
        if status is None:
            figures, semantic = _no_data(), _no_data()
        else:
            figures, semantic = self._figures(status.cache, monitor), self._semantic(status.cache)
        self.query_one("#cache-figures", LiveText).show_text(figures)
        self.query_one("#cache-semantic", LiveText).show_text(semantic)
        self.query_one("#cache-recent", LiveText).show_text(self._recent(monitor))

    @staticmethod
    def _figures(cache: CacheStatus, monitor: Monitor) -> Text:
        text = Text()
        text.append("mode       ")
        text.append(cache.mode, style="bold green" if cache.mode == "on" else "bold yellow")
        text.append("\n\nhit rate   ")
        text.append_text(bar(cache.hit_rate, BAR_WIDTH, style="cyan"))
        text.append(f" {percent(cache.hit_rate)}  ({cache.hits} exact hits, {cache.misses} misses")
        if cache.semantic_mode != "off":
            text.append(f"; {cache.semantic_hits} semantic hits")
        text.append(")\n")
        text.append("trend      ")
        text.append_text(spark(monitor.cache_hit_rate, TREND_WIDTH, top=1.0))
        text.append("\n\nsize       ")
        fraction = cache.bytes / cache.max_bytes if cache.max_bytes else 0.0
        text.append_text(bar(fraction, BAR_WIDTH))
        bound = size(cache.max_bytes) if cache.max_bytes else "unbounded"
        text.append(f" {size(cache.bytes)} of {bound}  ({cache.entries} entries)\n")
        text.append(f"evictions  {cache.evictions}\n")
        text.append(f"saved      {usd(cache.saved_usd)}")
        return text

    @staticmethod
    def _semantic(cache: CacheStatus) -> Text:
        mode = cache.semantic_mode
        text = Text()
        text.append("mode       ")
        styles = {"on": "bold green", "shadow": "bold yellow"}
        text.append(mode, style=styles.get(mode, "grey50"))
        if cache.semantic_problem:
            text.append(f"  not running: {cache.semantic_problem}", style="bold red")
        if mode == "off":
            text.append("  (questions asked in other words are not looked up)", style="grey50")
            return text
        lookups = cache.semantic_lookups
        text.append(f"\nheld       {cache.semantic_entries} questions\n")
        rate = _share_bar(text, "hits", cache.semantic_hits, lookups, "magenta")
        text.append(f" {percent(rate)}  ({cache.semantic_hits} of {lookups} exact misses)")
        text.append(f"  saved {usd(cache.semantic_saved_usd)}\n")
        compared = cache.shadow_compared
        text.append(f"would-be   {cache.would_be_hits} (shadow: not served)\n")
        agreement = _share_bar(text, "agreed", cache.shadow_agreed, compared, "green")
        text.append(f" {percent(agreement) if compared else '-'}  ")
        text.append(f"({cache.shadow_agreed} of {compared} compared)")
        return text

    @staticmethod
    def _recent(monitor: Monitor) -> Text:
        records = list(monitor.tail)
        if not records:
            return Text("no requests seen yet", style="grey50")
        hits = [record for record in records if record.cached]
        fraction = len(hits) / len(records)
        text = Text(f"{len(hits)} of the last {len(records)} requests were cache hits ")
        text.append(f"({percent(fraction)}")
        semantic = sum(record.semantic for record in hits)
        text.append(f", {semantic} semantic)\n" if semantic else ")\n")
        by_app: dict[str, int] = {}
        for record in hits:
            by_app[record.app] = by_app.get(record.app, 0) + 1
        if by_app:
            text.append("hits by app: ")
            text.append("  ".join(f"{app} {count}" for app, count in sorted(by_app.items())))
        return text


def _no_data() -> Text:
    return Text("no data yet", style="grey50")


def _share_bar(text: Text, label: str, part: int, whole: int, style: str) -> float:
    """Append ``label`` (in its column) and a bar of ``part`` out of ``whole`` to ``text``;
    the fraction (0 when ``whole`` is)."""
    fraction = part / whole if whole else 0.0
    text.append(f"{label:<11}")
    text.append_text(bar(fraction, BAR_WIDTH, style=style))
    return fraction
