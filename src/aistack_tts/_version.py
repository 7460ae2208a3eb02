"""The gateway's version (``aistack_tts.__version__``), where every module may read it."""

__version__ = "0.1.0"
