"""Optical flow: engines (OpenCV DIS, ptlflow models) and the colour-wheel rendering the model consumes."""
