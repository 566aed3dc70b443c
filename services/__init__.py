"""The four gRPC services of platformQ analytics and the `analytics` command that runs them."""
