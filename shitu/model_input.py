"""What every shitu network expects as input: RGB in [0, 1], normalised with ImageNet's mean and std.

Training, the teachers and export all read the numbers here; an exported model carries them in its
metadata, and the inference side reads them from there.
"""

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
