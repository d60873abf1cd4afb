"""An in-test fake quotad daemon: real frames on a Unix socket, scripted replies.

It speaks the wire protocol as the real daemon does (first frame Hello → Welcome; replies carry
the request id; ``Cancel(id)`` makes an unfinished request answer ``Error(code="cancelled")``;
a bad frame gets ``Error(code="bad_frame", id=0)`` and the connection closed), with one thread
per connection so it serves blocking and async clients alike, under any event loop. What it
answers is up to a handler; :func:`answer` gives the ordinary replies. Every request it receives
is recorded, so tests can assert what a client sent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable

from quotad.protocol.framing import FrameEncoder, FrameError, request_decoder
from quotad.protocol.messages import (
    CONTINUING_REPLIES,
    Acquire,
    Admin,
    Cancel,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    Embed,
    EmbedReply,
    Error,
    Hello,
    Ok,
    Permit,
    Reply,
    Request,
    Settle,
    Snapshot,
    Spend,
    SpendReply,
    Status,
    StatusReply,
    Subscribe,
    Usage,
    Welcome,
)

Handler = Callable[["FakeConnection", Request], None]
TERMINAL_WAIT_S = 5.0
USER_HI = [{"role": "user", "content": "hi"}]


class FakeConnection:
    """One accepted client connection of the fake daemon."""

    def __init__(self, daemon: FakeDaemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.hello: Hello | None = None
        self._encoder = FrameEncoder()
        self._send_lock = threading.Lock()
        self._unfinished: set[int] = set()

    def send(self, *replies: Reply) -> None:
        """Send replies (a reply that ends its request marks it finished)."""
        with self._send_lock:
            for reply in replies:
                if not isinstance(reply, CONTINUING_REPLIES):
                    self._unfinished.discard(reply.id)
                with contextlib.suppress(OSError):
                    self.sock.sendall(self._encoder.encode(reply))

    def close(self) -> None:
        """Drop the connection, as a crashing daemon would."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def serve(self) -> None:
        decoder = request_decoder()
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    for request in decoder.feed(data):
                        self._dispatch(request)
                except FrameError as error:
                    self.send(Error(code="bad_frame", message=str(error)))
                    return
        finally:
            self.sock.close()

    def _dispatch(self, request: Request) -> None:
        if self.hello is None:
            if type(request) is not Hello:
                self.send(Error(code="bad_request", message="the first frame must be Hello"))
                self.close()
                return
            self.hello = request
            self.daemon.record(request)
            if self.daemon.handshake is not None:
                self.daemon.handshake(self)
            else:
                self.send(self.daemon.welcome)
            return
        self.daemon.record(request)
        if type(request) is Cancel:
            if request.id in self._unfinished:
                self.send(Error(id=request.id, code="cancelled", message="cancelled"))
            return
        self._unfinished.add(request.id)
        self.daemon.handler(self, request)


class FakeDaemon:
    """A fake daemon listening on ``path`` until stopped; use it as a context manager.

    ``welcome`` is its answer to Hello (an ``Error`` there refuses the client);
    ``handshake``, if given, answers Hello in its place, on the connection's thread.
    """

    def __init__(
        self,
        path: str,
        handler: Handler | None = None,
        *,
        welcome: Reply | None = None,
        handshake: Callable[[FakeConnection], None] | None = None,
    ) -> None:
        self.path = path
        self.handler: Handler = handler or answer
        self.welcome: Reply = welcome or Welcome(daemon_version="fake", features=["stream"])
        self.handshake = handshake
        self.received: list[Request] = []
        self.connections: list[FakeConnection] = []
        self._changed = threading.Condition()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FakeDaemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen and accept connections in a thread."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self._listener = listener
        self._spawn(self._accept, listener)

    def stop(self) -> None:
        """Stop listening, drop every connection, remove the socket, join the threads."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for connection in self.connections:
            connection.close()
        for thread in self._threads:
            thread.join(TERMINAL_WAIT_S)
        self._threads.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            connection = FakeConnection(self, sock)
            self.connections.append(connection)
            self._spawn(connection.serve)

    def record(self, request: Request) -> None:
        with self._changed:
            self.received.append(request)
            self._changed.notify_all()

    def requests(self, kind: type[Request]) -> list[Request]:
        """The requests of one type received so far, in order."""
        with self._changed:
            return [request for request in self.received if type(request) is kind]

    def wait_for(self, kind: type[Request], count: int = 1) -> list[Request]:
        """Block until ``count`` requests of type ``kind`` arrived; return them."""
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: len([r for r in self.received if type(r) is kind]) >= count,
                TERMINAL_WAIT_S,
            )
        assert arrived, f"the fake daemon did not receive {count} {kind.__name__}"
        return self.requests(kind)


def last_text(chat: Chat) -> str:
    """The text of a chat request's last message."""
    content = chat.messages[-1].content
    return content if isinstance(content, str) else ""


def chat_reply(chat: Chat) -> ChatReply:
    """What the fake answers a plain chat: an echo of its last message."""
    text = last_text(chat)
    return ChatReply(
        id=chat.id,
        content=f"echo: {text}",
        finish_reason="stop",
        usage=Usage(prompt_tokens=len(text), completion_tokens=2),
        cost_usd=0.001,
        target="fake/echo",
        attempts=1,
        request_id=f"r{chat.id}",
    )


def stream_replies(chat: Chat) -> list[Reply]:
    """What the fake answers a streamed chat: the echo word by word, then the end."""
    whole = chat_reply(chat)
    words = (whole.content or "").split(" ")
    chunks: list[Reply] = [
        ChatChunk(id=chat.id, delta=word if n == 0 else f" {word}") for n, word in enumerate(words)
    ]
    end = ChatEnd(
        id=chat.id,
        content=whole.content,
        finish_reason="stop",
        usage=whole.usage,
        cost_usd=whole.cost_usd,
        target=whole.target,
        attempts=1,
        request_id=whole.request_id,
    )
    return [*chunks, end]


def answer(connection: FakeConnection, request: Request) -> None:
    """The ordinary replies of the fake daemon."""
    match request:
        case Chat(stream=True):
            connection.send(*stream_replies(request))
        case Chat():
            connection.send(chat_reply(request))
        case Embed(input=str() as text):
            connection.send(EmbedReply(id=request.id, embeddings=[[float(len(text))]]))
        case Embed(input=list() as texts):
            vectors = [[float(len(text))] for text in texts]
            connection.send(EmbedReply(id=request.id, embeddings=vectors))
        case Acquire():
            connection.send(
                Permit(id=request.id, permit_id=f"p{request.id}", lease_s=request.lease_s or 120)
            )
        case Settle() | Admin():
            connection.send(Ok(id=request.id))
        case Status():
            connection.send(StatusReply(id=request.id, daemon_version="fake", pid=os.getpid()))
        case Spend():
            connection.send(SpendReply(id=request.id, period=request.period, by=request.by))
        case Subscribe():
            connection.send(*(Snapshot(id=request.id, seq=seq) for seq in (1, 2, 3)))
        case _:
            connection.send(Error(id=request.id, code="bad_request", message="unexpected"))


def holding_chats(held: list[tuple[FakeConnection, Request]]) -> Handler:
    """A handler that answers everything but Chat, which it keeps in ``held`` unanswered."""

    def handle(connection: FakeConnection, request: Request) -> None:
        if type(request) is Chat:
            held.append((connection, request))
        else:
            answer(connection, request)

    return handle


def answering_chat_with(*replies: Reply) -> Handler:
    """A handler that answers a Chat with ``replies`` (ids filled in)."""

    def handle(connection: FakeConnection, request: Request) -> None:
        if type(request) is not Chat:
            answer(connection, request)
            return
        for reply in replies:
            reply.id = request.id
        connection.send(*replies)

    return handle
