"""Every model family's runtime side, one module each (pi-only helpers say so in their name).

The table is the runtime's one registration per family; `runtime.family.family_named` reads it.
"""

from quantvla_ros.runtime.families.groot import GrootFamily
from quantvla_ros.runtime.families.pi import PiFamily

FAMILIES = {"pi": PiFamily, "groot": GrootFamily}
