"""Data on disk: revisitop-format datasets (``revisitop``), their downloads (``download``), and
image files turned into network inputs (``preprocess``)."""
