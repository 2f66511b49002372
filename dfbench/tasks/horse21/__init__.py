"""Label-scarce segmentation on ddpm-segmentation's datasets (Horse-21): the pixel-classifier ensemble."""
