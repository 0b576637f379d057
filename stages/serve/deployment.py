"""The Ray Serve deployment: one replica = one engine with its KV-cache pool, behind Serve's HTTP
proxy. The replica builds the OpenAI app (stages.serve.openai_app) at start-up; Serve calls
``check_health`` periodically (a failing engine gets the replica restarted) and ``__del__`` on
shutdown, after in-flight requests had ``graceful_shutdown_timeout_s`` to finish.
"""

from __future__ import annotations

import logging

from ray import serve

from stages.serve.config import ServeConfig
from stages.serve.deployment_options import serve_deployment_options
from stages.serve.server import ServerSpec

log = logging.getLogger("ray.serve")


@serve.ingress()
class WhaleServer:
    async def __init__(self, spec: dict):
        from stages.serve.metrics import ServeMetrics
        from stages.serve.server import build_openai_server

        self.spec = ServerSpec(**spec)
        self.server = build_openai_server(self.spec, ServeMetrics())
        e = self.server.engine.engine
        log.info("whale replica up: %s (%s), %d KV slots x %d positions, MTP %s", self.spec.model_name,
                 self.spec.model_uri, e.num_slots, e.max_seq_len, "on" if e.use_mtp else "off")

    def __serve_build_asgi_app__(self):
        return self.server.app

    async def check_health(self) -> None:
        self.server.engine.check_health()

    async def __del__(self):
        await self.server.engine.shutdown(drain_timeout_s=min(self.spec.drain_timeout_s, 5.0))


def build_whale_app(cfg: ServeConfig, spec: ServerSpec):
    """The Serve application (bind) for our engine."""
    return serve.deployment(WhaleServer, name="WhaleServer", **serve_deployment_options(cfg)).bind(spec.as_dict())
