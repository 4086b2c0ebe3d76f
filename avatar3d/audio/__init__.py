"""Audio: features (mel, Whisper) and the audio-to-motion prior."""
