"""hf_encoderlock.probing."""
