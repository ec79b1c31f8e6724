"""Worker package of the threshold service: the platform imports this folder as the
package ``service_module`` and runs ``from service_module import <workerEntry>``."""

from .threshold_jobs import deliver, segment

__all__ = ["deliver", "segment"]
