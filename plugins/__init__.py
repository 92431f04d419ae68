"""Built-in plugins of expnet-stream (installed as ``expnet_stream_plugins``).

Importing this package registers every built-in plugin with :mod:`expnet_stream.plugin_registry`.
"""

from . import detectors as detectors
