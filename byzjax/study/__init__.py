"""The ``byzjax run`` robustness benchmark: config, grid, store and report."""
