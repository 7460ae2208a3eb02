"""What the ``twist aistack-tts`` ServiceMaker loads: ``Options`` and ``makeService``."""

from ._options import Options
from ._service import makeService

__all__ = ["Options", "makeService"]
