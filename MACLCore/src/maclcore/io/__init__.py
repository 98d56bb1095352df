"""Reading and writing volumes, label maps and Slicer segmentations, with their geometry."""
