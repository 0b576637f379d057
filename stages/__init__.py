"""Whale pipeline stages: one package per stage, each exposing STAGE (see pipeline.stage)."""
