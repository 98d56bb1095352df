"""The Qt side of the MACLSegment Widget, beside the Qt-free ``MACLSegmentLib``.

``sections`` holds the Widget's button handlers and polls, one mixin per section of the panel (setup,
training, human in the loop, the running job); ``MACLSegment.py`` keeps the Widget's set-up and bindings. Like
the Widget, this runs only inside the Slicer application.
"""
