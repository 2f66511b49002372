"""ADE20K and Cityscapes semantic segmentation: a linear probe, and GDF's UPerNet recipe on mmsegmentation."""
