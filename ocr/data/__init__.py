"""Data side of the OCR pipeline: annotations, datasets, transforms, DBNet targets."""
