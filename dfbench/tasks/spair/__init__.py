"""SPair-71k semantic correspondence: PCK of transferred keypoints (zero-shot matchers and GDF's trained readout)."""
