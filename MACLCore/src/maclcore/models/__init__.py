"""Network architectures: the U-Net and the MACL pretraining model built on it."""
