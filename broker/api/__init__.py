"""HTTP API: thin FastAPI routers over the services in ``broker.core``."""
