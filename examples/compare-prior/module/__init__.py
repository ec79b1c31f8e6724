"""Worker package of the compare-prior service: the platform imports this folder as the
package ``service_module`` and runs ``from service_module import <workerEntry>``."""

from .compare_jobs import compare_with_prior

__all__ = ["compare_with_prior"]
