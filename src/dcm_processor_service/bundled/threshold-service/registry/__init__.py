"""Registry package of the threshold service: the platform imports this folder as a
package and looks each job's ``registryEntry`` up here."""

from .threshold_filters import ct_or_mr_volume

__all__ = ["ct_or_mr_volume"]
