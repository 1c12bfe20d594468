"""Tools for testing pactframe plugins: contract checks and Hypothesis strategies.

- :func:`check_component` runs every contract check against a class or instance.
- :mod:`pactframe.testing.strategies` constructs matrices with a chosen
  spectrum and gap, and task-vector bundles.
- :func:`register_profiles` registers the ``ci`` Hypothesis profile.
"""

from pactframe.testing.checks import COMMON_CHECKS, KIND_CHECKS, check_component, sample_bundles
from pactframe.testing.profiles import register_profiles

__all__ = ["COMMON_CHECKS", "KIND_CHECKS", "check_component", "register_profiles", "sample_bundles"]
