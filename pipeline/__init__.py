"""Whale orchestration core: config, stage DAG on Ray, caching, MLflow tracking, CLI."""
