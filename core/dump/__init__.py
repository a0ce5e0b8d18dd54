"""Reading and writing activation dumps (the only part of actgeom that touches h5py)."""

from actgeom.core.dump.layout import DumpSpec, LayerInfo, natural_key
from actgeom.core.dump.reader import Dump
from actgeom.core.dump.writer import DumpWriter

__all__ = ["Dump", "DumpSpec", "DumpWriter", "LayerInfo", "natural_key"]
