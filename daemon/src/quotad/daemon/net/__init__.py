"""The daemon's network plumbing, apart from what any request means:

- :mod:`.http11`: the HTTP/1.1 server core (the front door and ``quotad sim`` run on it);
- :mod:`.pool`: the lean keep-alive connection pool for plain-``http://`` providers, as an
  ``httpx`` transport;
- :mod:`.sse`: server-sent events read from a provider's streamed answer;
- :mod:`.content_coding`: a provider's body inflated from gzip or deflate, a bounded piece
  at a time;
- :mod:`.addresses`: loopback and proxy helpers;
- :mod:`.deadlines`: request deadlines watched by one sweep task;
- :mod:`.log_rate`: how often an event any client can repeat is logged.
"""
