"""The driving path: render a fitted avatar speaking audio, and measure it (eval, metrics, sync)."""
