"""Video -> dataset stages: decode, track, pose, parse, background, audio features."""
