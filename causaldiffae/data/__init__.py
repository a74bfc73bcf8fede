"""Data sets: generated ones with ground-truth counterfactuals, and users' own images with labels."""

from causaldiffae.data.dataset import ImageLabelDataset, resize_images

__all__ = ["ImageLabelDataset", "resize_images"]
