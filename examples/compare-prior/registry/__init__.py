"""Registry package of the compare-prior service: the platform imports this folder as a
package and looks each job's ``registryEntry`` up here."""

from .compare_filters import volume_series

__all__ = ["volume_series"]
