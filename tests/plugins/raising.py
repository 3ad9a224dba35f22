"""A plugin that raises while being imported (tests the guarded plugin import)."""

raise ValueError("plugin misconfigured: MY_MODEL_DIR is not set")
