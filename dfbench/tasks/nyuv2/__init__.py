"""NYUv2 monocular depth: CleanDIFT's linear bins probe and probe3d's DPT head."""
