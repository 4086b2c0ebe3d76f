"""The synthetic demo subject: a 3D head speaking synthesised audio, with exact ground truth."""
