"""The put front (compiled from ``dropr._putter_py``, whose API and documentation it has)."""

from ._putter_py import FIELDS_CACHE as FIELDS_CACHE
from ._putter_py import Putter as Putter
from ._putter_py import Spools as Spools
