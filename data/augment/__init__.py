"""Seeded 2D/3D augmentation: our own n-D transforms plus albumentations where it serves.

Importing this package registers every transform in :data:`REGISTRY`.
"""

from medflow.data.augment import albu, artifacts, intensity, lesion, spatial  # noqa: F401  (registration)
from medflow.data.augment.base import REGISTRY, Chain, Transform, build_transform, sample_seed

__all__ = ["REGISTRY", "Chain", "Transform", "build_transform", "sample_seed"]
