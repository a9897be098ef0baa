"""Shared fixtures for policy and secure-runtime tests."""

from sealinfer.tests.policy.secure_fixtures import sealed  # noqa: F401  (pytest fixture)
