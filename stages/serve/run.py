"""The serve stage: resolve the model version, deploy it on Ray Serve, smoke-test it, record it.

Output (``ctx.out``):
    model/            the downloaded model folder (HF checkpoint + tokenizer), unless a path was served
    deployment.json   URL, model URI + version, backend, config, smoke-test figures

The Serve controller is a detached actor: the application keeps running after this stage's Ray
task returns (and after a ``ray job submit`` driver exits) until ``serve shutdown`` or the
cluster stops. Redeploying under the same app name replaces it in place.
"""

from __future__ import annotations

import json
import time

from pipeline.stage import StageContext
from pipeline.tracking import tracking_uri_from_env
from stages.serve import model_source
from stages.serve.config import ServeConfig
from stages.serve.server import ServerSpec, ServeSetupError, check_model_dir, resolve_api_key
from stages.serve.smoke import smoke_test


def _log(msg: str) -> None:
    print(f"[serve] {msg}", flush=True)


def run(cfg: ServeConfig, ctx: StageContext) -> dict[str, float | int | str]:
    import ray

    t_start = time.perf_counter()
    tracking_uri = ctx.tracker.tracking_uri or tracking_uri_from_env()
    # -- what goes live: one pinned version, fetched and checked before any deployment ----------
    ref = model_source.requested_model(cfg.model, cfg.alias, ctx.name)
    source = model_source.resolve(ref, tracking_uri)
    _log(f"model {ref} -> {source.uri}")
    local = check_model_dir(model_source.fetch(source, ctx.out / "model", tracking_uri))
    model_name = cfg.served_model_name or ctx.name

    if not ray.is_initialized():   # the runner starts Ray; this covers library-style calls
        ray.init(include_dashboard=False)
    from stages.serve.deploy import deploy_app, endpoint_url, run_on_head_node, start_serve

    host, port = start_serve(cfg.http)
    if cfg.backend == "vllm":
        from stages.serve.vllm_backend import build_vllm_app

        app = build_vllm_app(cfg, str(local), model_name)
    else:
        from stages.serve.deployment import build_whale_app

        spec = ServerSpec.from_config(cfg, model_uri=source.uri, local_path=str(local.resolve()),
                                      tracking_uri=tracking_uri, model_name=model_name)
        app = build_whale_app(cfg, spec)
    _log(f"deploying app {cfg.app_name!r} ({cfg.backend}) ...")
    deploy_app(app, cfg)
    url = endpoint_url(host, port, cfg.http.route_prefix)
    _log(f"live at {url}")

    # -- smoke test: a real streamed request through the HTTP proxy -----------------------------
    smoke: dict = {}
    if cfg.smoke_test.enabled:
        api_key, health_only = _driver_api_key(cfg)
        st = cfg.smoke_test
        smoke = run_on_head_node(smoke_test, url, model_name, st.prompt, st.max_tokens, st.timeout_s, api_key,
                                 health_only)
        if "ttft_ms" in smoke:
            _log(f"smoke test: {smoke['completion_tokens']} tokens, TTFT {smoke['ttft_ms']:.0f} ms, "
                 f"{smoke['tokens_per_s']:.1f} tokens/s")

    # -- record ----------------------------------------------------------------------------------
    deployment = {
        "url": url, "openai_base_url": f"{url.rstrip('/')}/v1", "app_name": cfg.app_name, "backend": cfg.backend,
        "served_model_name": model_name, "model": {**source.as_dict(), "local_path": str(local.resolve())},
        "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "auth": cfg.auth.enabled, "smoke_test": smoke,
        "config": cfg.model_dump(mode="json"),
    }
    (ctx.out / "deployment.json").write_text(json.dumps(deployment, indent=2) + "\n")
    _record(ctx, cfg, source, url, deployment, smoke)
    _log(usage_text(url, model_name, cfg.app_name, cfg.auth.enabled, cfg.auth.api_key_env))

    summary: dict[str, float | int | str] = {
        "url": url, "model_uri": source.uri, "model_version": source.version or "", "backend": cfg.backend,
        "deploy_s": round(time.perf_counter() - t_start, 2),
    }
    for key in ("ttft_ms", "tokens_per_s", "completion_tokens"):
        if key in smoke:
            summary[f"smoke_{key}" if key == "completion_tokens" else key] = smoke[key]
    return summary


def _driver_api_key(cfg: ServeConfig) -> tuple[str | None, bool]:
    """The key for the smoke test; if this node cannot see it, only /health is checked."""
    if not cfg.auth.enabled:
        return None, False
    try:
        return resolve_api_key(cfg.auth), False
    except ServeSetupError as e:
        _log(f"auth is on but the key is not visible here ({e}); the smoke test checks /health only")
        return None, True


def _record(ctx: StageContext, cfg: ServeConfig, source, url: str, deployment: dict, smoke: dict) -> None:
    tr = ctx.tracker
    tr.set_tags({"serve.url": url, "serve.model_uri": source.uri, "serve.model_requested": source.requested,
                 "serve.model_version": source.version or "", "serve.model_name": source.name or "",
                 "serve.model_alias": source.alias or "", "serve.backend": cfg.backend, "serve.app": cfg.app_name})
    tr.log_metrics({f"smoke/{k}": v for k, v in smoke.items() if isinstance(v, (int, float))})
    tr.log_dict(deployment, "deployment.json")
    if tr.active and source.name and source.version:
        # on the registry entry too: which version is live, where, since when
        tr.client.set_model_version_tag(source.name, source.version, "whale.serving", url)
        tr.client.set_model_version_tag(source.name, source.version, "whale.deployed_at", deployment["deployed_at"])


def usage_text(url: str, model_name: str, app_name: str, auth: bool, key_env: str) -> str:
    """What to paste to talk to the deployment: curl and the openai client."""
    base = f"{url.rstrip('/')}/v1"
    auth_header = f' -H "Authorization: Bearer ${key_env}"' if auth else ""
    key = f'os.environ["{key_env}"]' if auth else '"none"'
    imports = "import os\n  from openai import OpenAI" if auth else "from openai import OpenAI"
    return f"""OpenAI-compatible endpoint: {base}
  curl {base}/chat/completions -H "Content-Type: application/json"{auth_header} \\
    -d '{{"model": "{model_name}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 64}}'

  {imports}
  client = OpenAI(base_url="{base}", api_key={key})
  reply = client.chat.completions.create(model="{model_name}", max_tokens=64,
                                         messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)

Remove it with: python -c "import ray; from ray import serve; ray.init(); serve.delete('{app_name}')"
  (or stop every Serve app: serve shutdown -y)"""
