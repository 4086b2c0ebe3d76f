"""Browser viewer: live render, microphone in."""
