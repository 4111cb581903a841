"""ml_collections configs (big_vision style: each module has ``get_config(arg=None)``).

Load one with :func:`mirage_jax.config.load_config` (``"wan22_ti2v_5b"`` or a path to a .py
file) or with ``ml_collections.config_flags`` in a launcher.
"""
