"""Code shared by every service: configuration, errors, logging, the gRPC server scaffold."""
