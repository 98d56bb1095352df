"""Loss functions: segmentation (cross-entropy, Dice) and the MLC contrastive loss."""
