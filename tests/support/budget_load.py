"""One client process of the fleet budget tests: ``--threads`` concurrent clients of one daemon,
each sending chats until its budget refuses it (``budget_exceeded``) or it has sent
``--requests`` of them; a ``rate_limited`` refusal (Redis away: the host holds too little) is
counted and waited out (its ``retry_after_s``, at most 1 s) before the next request.

    python -m tests.support.budget_load --socket S --app A --model M --threads 16 \\
        --requests 40 --start-at T

Prints one JSON line: ok, cost_usd (the sum of the replies' costs), and the refusals by code.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import msgspec

MESSAGES = [{"role": "user", "content": "spend a little of the fleet's budget"}]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from quotad.client import Client, QuotadError

    result: dict[str, Any] = {"app": args.app, "ok": 0, "cost_usd": 0.0, "errors": {}}
    lock = threading.Lock()

    def client_thread() -> None:
        with Client(socket=args.socket, app=args.app, timeout=60) as client:
            client.status()  # connected before the start
            delay = args.start_at - time.time()
            if delay > 0:
                time.sleep(delay)
            for _ in range(args.requests):
                try:
                    reply = client.chat(
                        args.model, MESSAGES, max_tokens=args.max_tokens, cache="bypass"
                    )
                except QuotadError as error:
                    with lock:
                        result["errors"][error.code] = result["errors"].get(error.code, 0) + 1
                    if error.code == "budget_exceeded":
                        return
                    if error.code == "rate_limited":
                        time.sleep(min(1.0, error.retry_after_s or 0.2))
                        continue
                    raise
                with lock:
                    result["ok"] += 1
                    result["cost_usd"] += reply.cost_usd or 0.0

    threads = [threading.Thread(target=client_thread) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--start-at", type=float, default=0.0)
    print(msgspec.json.encode(run(parser.parse_args())).decode(), flush=True)


if __name__ == "__main__":
    main()
