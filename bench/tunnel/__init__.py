"""The tunnel baseline: a faithful Python model of the central WebSocket tunnel that
switchy replaces (issue 16, section 3), for benchmarks only.

* :mod:`.frames`: the wire format (JSON request frames, binary response frames).
* :mod:`.server`: the tunnel server (aiohttp): clients' HTTP requests to the sender.
* :mod:`.sender`: the home side: one WebSocket to the tunnel, requests proxied to the
  local HTTP server.
"""
