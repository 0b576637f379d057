from tests.model.conftest import micro_lm, single_thread  # noqa: F401  (shared fixtures)
