"""The gateway: the Envoy config template and its renderer, and the WebSocket bridge."""
